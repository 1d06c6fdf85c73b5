"""Pre-training module of the image–text recipe, and the zero-shot classifier it validates with."""

from __future__ import annotations

import math
import zlib
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl.distributed import gather_no_grad
from qualcl.recipes.fundus_mm.config import TrainConfig
from qualcl.recipes.fundus_mm.model import FundusMMNet

__all__ = ["ImageTextPretraining", "class_embeddings", "zero_shot_logits"]

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


@torch.no_grad()
def class_embeddings(net: FundusMMNet, prompt_ids: Tensor) -> Tensor:
    """``(C, P, T)`` prompt ids → ``(C, embed_dim)``: each class's mean normalised prompt embedding, normalised."""
    c, p, t = prompt_ids.shape
    emb = net.encode_text(prompt_ids.reshape(c * p, t)).reshape(c, p, -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def zero_shot_logits(image_embeddings: Tensor, classes: Tensor, scale: float = 100.0) -> Tensor:
    """``scale · cos(image, class)``: ``(N, D)`` normalised images × ``(C, D)`` classes → ``(N, C)``."""
    return scale * image_embeddings @ classes.T


class ImageTextPretraining(L.LightningModule):
    r"""``L = w_con L_con + w_img L_img + w_cap L_cap`` on :class:`FundusMMNet`, MAE's optimiser.

    AdamW (β 0.9, 0.95; no weight decay on biases, norms, embeddings and the logit scale), linear
    warm-up then cosine decay per step. The image and caption masks of step ``s`` are drawn from
    ``(seed, s)``, so a resumed run masks exactly as an uninterrupted one. Validation logs the
    zero-shot accuracy of the validation images against the class prompts (``val/zero_shot``)
    and the validation losses, one history row per epoch.

    Args:
        net: The model.
        config: Optimisation and loss weights.
        prompt_ids: ``(C, P, T)`` ids of each class's prompts.
        class_level: Class-level positives in ``L_con``.
        seed: Seed of the masks.
    """

    def __init__(
        self, net: FundusMMNet, config: TrainConfig, prompt_ids: Tensor, *, class_level: bool, seed: int = 0
    ) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.register_buffer("prompt_ids", prompt_ids.clone(), persistent=False)
        self.prompt_ids: Tensor
        self.class_level = class_level
        self.seed = seed
        self.weights = {
            "contrastive": config.contrastive_weight,
            "image": config.image_weight,
            "caption": config.caption_weight,
        }
        self.epoch_log: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._count = 0
        self._val: list[tuple[Tensor, Tensor]] = []
        self._val_sums: dict[str, float] = {}
        self._val_count = 0
        self._total_steps: int | None = None

    def _generator(self, step: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(zlib.crc32(f"{self.seed}/{step}".encode()))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One step on the weighted sum of the switched-on terms."""
        images, ids, labels, _ = batch
        out = self.net(
            images,
            ids,
            labels=labels if self.class_level else None,
            generator=self._generator(self.global_step, images.device),
        )
        loss = torch.stack([self.weights[k] * v for k, v in out.losses.items()]).sum()
        self.log("train/loss", loss.detach(), prog_bar=True)
        for name, value in out.losses.items():
            self._sums[f"loss_{name}"] = self._sums.get(f"loss_{name}", 0.0) + float(value.detach())
        self._sums["loss"] = self._sums.get("loss", 0.0) + float(loss.detach())
        self._count += 1
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Image embeddings for the zero-shot accuracy, and the validation losses (fixed masks)."""
        images, ids, labels, _ = batch
        self._val.append((self.net.encode_image(images), labels))
        with self.net.per_process():  # ranks may validate different numbers of batches: no collective here
            out = self.net(
                images,
                ids,
                labels=labels if self.class_level else None,
                generator=self._generator(-1 - batch_idx, images.device),
            )
        for name, value in out.losses.items():
            self._val_sums[name] = self._val_sums.get(name, 0.0) + float(value)
        self._val_count += 1

    def on_validation_epoch_end(self) -> None:
        """Log ``val/zero_shot`` (accuracy over every rank's images) and record the epoch's row."""
        if not self._val:
            return
        embeddings = gather_no_grad(torch.cat([e for e, _ in self._val])).cpu()
        labels = gather_no_grad(torch.cat([y for _, y in self._val])).cpu()
        self._val.clear()
        classes = class_embeddings(self.net, self.prompt_ids).cpu()
        accuracy = float((zero_shot_logits(embeddings, classes).argmax(1) == labels).double().mean())
        self.log("val/zero_shot", accuracy, prog_bar=True)
        val_losses = {f"val_loss_{k}": v / max(self._val_count, 1) for k, v in self._val_sums.items()}
        self._val_sums.clear()
        self._val_count = 0
        if self.trainer.sanity_checking:
            return
        row: dict[str, Any] = {"epoch": float(self.current_epoch)}
        row.update({k: v / max(self._count, 1) for k, v in self._sums.items()})
        row.update(val_losses)
        row["val_zero_shot"] = accuracy
        row["logit_scale"] = self.net.logit_scale
        self._sums.clear()
        self._count = 0
        self.epoch_log.append(row)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the running sums of an unfinished epoch in the checkpoint."""
        checkpoint["image_text_epoch_statistics"] = {
            "sums": dict(self._sums),
            "count": self._count,
            "total_steps": self._total_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore them, so that a resumed epoch's history row covers all its batches."""
        statistics = checkpoint.get("image_text_epoch_statistics", {})
        self._sums = dict(statistics.get("sums", {}))
        self._count = int(statistics.get("count", 0))
        self._total_steps = statistics.get("total_steps")

    def configure_optimizers(self) -> Any:
        """AdamW (β 0.9, 0.95) with per-step linear warm-up and cosine decay.

        A pretrained text tower's weights train at ``model.text_lr_scale × lr``.
        """
        lr = self.config.lr
        pretrained = self.net.config.text_tower == "pretrained"
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            flat = param.ndim <= 1 or "embedding" in name or "mask_token" in name or "logit_scale" in name
            slow = pretrained and name.startswith("net.text.model.")
            groups.setdefault((flat, slow), []).append(param)
        scale = self.net.config.text_lr_scale
        optimizer = torch.optim.AdamW(
            [
                {
                    "params": params,
                    "weight_decay": 0.0 if flat else self.config.weight_decay,
                    "lr": lr * (scale if slow else 1.0),
                }
                for (flat, slow), params in sorted(groups.items())
            ],
            lr=lr,
            betas=(0.9, 0.95),
        )
        # the schedule's length is fixed when the stage starts: a resumed run's loader skips the batches
        # already done, so Lightning's estimate would shrink (the checkpoint restores it before this call)
        if self._total_steps is None:
            self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        total = self._total_steps
        warmup = round(total * self.config.warmup_epochs / max(self.config.epochs, 1))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
