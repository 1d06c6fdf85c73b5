"""Objectives and pre-training module of the image–text recipe, and the zero-shot classifier it validates with.

:class:`ImageTextObjectives` (built by :func:`build_objectives`, the one place where the recipe's losses
are made) scores what :class:`FundusMMNet` computes; :class:`ImageTextPretraining` combines the two.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl.losses import CaptionLoss, ClipLoss, MaskedReconstructionLoss, SigLipLoss
from qualcl.recipes.fundus_mm.config import SIGLIP_ONE_POSITIVE, ModelConfig, TrainConfig
from qualcl.recipes.fundus_mm.model import FundusMMNet, PretrainOutput, per_process
from qualcl.recipes.modules import History, RecipeModule, at_least_float32

__all__ = ["ImageTextObjectives", "ImageTextPretraining", "build_objectives", "class_embeddings", "zero_shot_logits"]

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


class ImageTextObjectives(nn.Module):
    r"""The switched-on objectives and their weights: ``L = w_con L_con + w_img L_img + w_cap L_cap``.

    Built by :func:`build_objectives`. A contrastive loss's learnt logit scale (and SigLIP's bias)
    lives here, trained with the network and saved beside it.

    Args:
        contrastive: ``L_con`` on the un-fused pooled embeddings, or ``None``.
        image: ``L_img`` on the predicted patches, or ``None``.
        caption: ``L_cap`` on the caption logits, or ``None``.
        weights: ``{"contrastive": w_con, "image": w_img, "caption": w_cap}``.
    """

    def __init__(
        self,
        contrastive: ClipLoss | SigLipLoss | None,
        image: MaskedReconstructionLoss | None,
        caption: CaptionLoss | None,
        weights: dict[str, float],
    ) -> None:
        super().__init__()
        self.contrastive, self.image, self.caption = contrastive, image, caption
        self.weights = dict(weights)

    @property
    def logit_scale(self) -> float:
        """The contrastive logit scale (1/0.07 when the contrastive objective is off)."""
        return 1 / 0.07 if self.contrastive is None else float(self.contrastive.current_logit_scale().detach())

    def forward(self, out: PretrainOutput, labels: Tensor | None = None) -> dict[str, Tensor]:
        """The unweighted terms of the switched-on objectives, in the order contrastive, image, caption.

        Args:
            out: The network's forward.
            labels: ``(N,)`` class ids for class-level positives in ``L_con`` (``None``: one positive per row).

        Raises:
            ValueError: Class-level positives with SigLIP (one positive per image).
        """
        terms: dict[str, Tensor] = {}
        if self.contrastive is not None and out.image_embedding is not None and out.text_embedding is not None:
            z_img, z_txt = at_least_float32(out.image_embedding), at_least_float32(out.text_embedding)
            if isinstance(self.contrastive, SigLipLoss):
                if labels is not None:
                    raise ValueError(SIGLIP_ONE_POSITIVE)
                terms["contrastive"] = self.contrastive(z_img, z_txt)
            else:
                terms["contrastive"] = self.contrastive(z_img, z_txt, labels=labels)
        if self.image is not None and out.pred is not None and out.target is not None:
            terms["image"] = self.image(at_least_float32(out.pred), at_least_float32(out.target), out.mask)
        if self.caption is not None and out.caption_logits is not None and out.caption_labels is not None:
            terms["caption"] = self.caption(at_least_float32(out.caption_logits), out.caption_labels)
        return terms

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        """``Σ w_k · term_k`` over the terms."""
        return torch.stack([self.weights[k] * v for k, v in terms.items()]).sum()


def build_objectives(model: ModelConfig, train: TrainConfig, *, pad_id: int, gather: bool) -> ImageTextObjectives:
    """The recipe's losses, all made here: CLIP or SigLIP, masked reconstruction, captioning, with their weights.

    Args:
        model: Which objectives are on (``contrastive``, ``contrastive_loss``, ``mim``, ``norm_pix_loss``,
            ``loss_on``, ``caption``).
        train: The loss weights.
        pad_id: The tokenizer's pad id (no caption loss there).
        gather: ``gather_distributed`` of every loss (:func:`qualcl.recipes.modules.gathering`).
    """
    contrastive: ClipLoss | SigLipLoss | None = None
    if model.contrastive and model.contrastive_loss == "siglip":
        contrastive = SigLipLoss(gather_distributed=gather)
    elif model.contrastive:
        contrastive = ClipLoss(learnable_logit_scale=True, gather_distributed=gather)
    return ImageTextObjectives(
        contrastive,
        MaskedReconstructionLoss(model.norm_pix_loss, model.loss_on, gather_distributed=gather) if model.mim else None,
        CaptionLoss(pad_id=pad_id, gather_distributed=gather) if model.caption != "none" else None,
        {"contrastive": train.contrastive_weight, "image": train.image_weight, "caption": train.caption_weight},
    )


class ImageTextPretraining(RecipeModule):
    r"""``L = w_con L_con + w_img L_img + w_cap L_cap``: :class:`FundusMMNet` scored by its objectives, MAE's optimiser.

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
        objectives: The losses (default: :func:`build_objectives` of the network's config, gathering
            as the network does).
    """

    history = History(
        curves={
            "loss": "total (weighted)",
            "loss_contrastive": "contrastive",
            "loss_image": "masked image (MSE)",
            "loss_caption": "caption (CE)",
        },
        metrics={"val_zero_shot": "val zero-shot accuracy"},
        extra=("val_loss_contrastive", "val_loss_image", "val_loss_caption", "logit_scale"),
        title="Image–text pre-training, loss per objective",
        metrics_label="accuracy",
    )
    monitor = "zero_shot"

    def __init__(
        self,
        net: FundusMMNet,
        config: TrainConfig,
        prompt_ids: Tensor,
        *,
        class_level: bool,
        seed: int = 0,
        objectives: ImageTextObjectives | None = None,
    ) -> None:
        super().__init__()
        self.net, self.config, self.class_level, self.seed = net, config, class_level, seed
        if objectives is None:
            objectives = build_objectives(
                net.config, config, pad_id=net.tokenizer.pad_id, gather=net.gather_distributed
            )
        self.objectives = objectives
        self.register_buffer("prompt_ids", prompt_ids.clone(), persistent=False)
        self.prompt_ids: Tensor
        self._total_steps: int | None = None

    def terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """The unweighted objectives of a batch, its masks drawn from ``(seed, step)``."""
        images, ids, labels, _ = batch
        generator = torch.Generator(device=images.device).manual_seed(zlib.crc32(f"{self.seed}/{step}".encode()))
        out = self.net(images, ids, generator=generator)
        terms: dict[str, Tensor] = self.objectives(out, labels if self.class_level else None)
        return terms

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One step on the weighted sum of the switched-on terms."""
        terms = self.terms(batch, self.global_step)
        loss = self.objectives.total(terms)
        self.record(loss=loss, **{f"loss_{name}": value for name, value in terms.items()})
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Image embeddings for the zero-shot accuracy, and the validation losses (fixed masks)."""
        images, _, labels, _ = batch
        self.collect(embeddings=self.net.encode_image(images), labels=labels)
        with per_process(self):  # ranks may validate different numbers of batches: no collective here
            terms = self.terms(batch, -1 - batch_idx)
        self.collect(**{f"loss_{name}": value.detach().double().reshape(1) for name, value in terms.items()})

    def validation_metrics(self, outputs: dict[str, Tensor]) -> dict[str, float]:
        """Zero-shot accuracy over every rank's images, and the mean validation loss of each objective."""
        classes = class_embeddings(self.net, self.prompt_ids).cpu()
        predicted = zero_shot_logits(outputs["embeddings"], classes).argmax(1)
        metrics = {"zero_shot": float((predicted == outputs["labels"]).double().mean())}
        metrics.update({name: float(v.mean()) for name, v in outputs.items() if name.startswith("loss_")})
        return metrics

    def epoch_extras(self) -> dict[str, float]:
        """The contrastive logit scale."""
        return {"logit_scale": self.objectives.logit_scale}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the running sums of an unfinished epoch and the schedule's length."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["image_text_total_steps"] = self._total_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore them."""
        super().on_load_checkpoint(checkpoint)
        self._total_steps = checkpoint.get("image_text_total_steps")

    def configure_optimizers(self) -> Any:
        """AdamW (β 0.9, 0.95) with per-step linear warm-up and cosine decay.

        A pretrained text tower's weights train at ``model.text_lr_scale × lr``.
        """
        lr, decay, scale = self.config.lr, self.config.weight_decay, self.net.config.text_lr_scale
        pretrained = self.net.config.text_tower == "pretrained"
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}  # (no weight decay, the slow text tower)
        for name, param in self.named_parameters():
            if param.requires_grad:
                flat = param.ndim <= 1 or "embedding" in name or "mask_token" in name or "logit_scale" in name
                slow = pretrained and name.startswith("net.text.model.")
                groups.setdefault((flat, slow), []).append(param)
        rates = [
            (p, 0.0 if flat else decay, lr * (scale if slow else 1.0)) for (flat, slow), p in sorted(groups.items())
        ]
        params = [{"params": p, "weight_decay": wd, "lr": rate} for p, wd, rate in rates]
        optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95))
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
