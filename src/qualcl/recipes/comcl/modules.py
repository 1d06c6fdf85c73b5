"""CoMCL's two Lightning modules: contrastive pre-training on patches, and DR-grading fine-tuning."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from qualcl.heads.projection import ProjectionHead
from qualcl.losses import MultiLevelInfoNCE, NTXentLoss
from qualcl.models import Encoder
from qualcl.recipes.comcl.data import PatchAugmentation
from qualcl.recipes.modules import GradingFineTuning
from qualcl.samplers import SelfPacedHardNegativeMiner

__all__ = ["ContrastivePretraining", "GradingFineTuning"]


class ContrastivePretraining(L.LightningModule):
    """Encoder + projection head trained with :class:`MultiLevelInfoNCE` (or NT-Xent for basic CL).

    Each step logs the loss, every pair's loss and, with a self-paced miner, ``K_t`` and the
    selected fraction; :attr:`step_log` keeps them for the run folder's history and plots.

    Args:
        encoder: Patch encoder.
        head: Projection head.
        loss: The multi-level loss, or SimCLR's NT-Xent on the two views (basic CL).
        temperature: ``tau`` of the loss (logged; each loss carries its own).
        lr: AdamW learning rate.
        weight_decay: Weight decay ``r(w)``.
        max_steps: Steps of the cosine learning-rate decay.
        augment: The patch augmentation whose photometric part runs here, on the batch's device,
            when batches come as ``(uint8 view1, uint8 view2, levels, colour params 1, 2)``
            (:class:`~qualcl.recipes.comcl.data.PatchPairDataset`); batches of float views are
            used as they are.
    """

    def __init__(
        self,
        encoder: Encoder,
        head: ProjectionHead,
        loss: MultiLevelInfoNCE | NTXentLoss,
        *,
        temperature: float,
        lr: float,
        weight_decay: float,
        max_steps: int,
        augment: PatchAugmentation | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.augment = augment
        self.loss_fn = loss
        self.temperature = temperature
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_steps = max_steps
        self.step_log: list[dict[str, float]] = []

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The batch's photometric augmentation and normalisation, on its device."""
        if self.augment is not None and len(batch) == 5:
            view1, view2, levels, params1, params2 = batch
            return self.augment.normalize(view1, params1), self.augment.normalize(view2, params2), levels
        return batch

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        """One contrastive step on a level-balanced batch of patch pairs."""
        view1, view2, levels = batch
        z1 = self.head(self.encoder(view1))
        z2 = self.head(self.encoder(view2))
        row: dict[str, float] = {"step": float(self.global_step)}
        if isinstance(self.loss_fn, NTXentLoss):
            loss: Tensor = self.loss_fn(z1, z2)
        else:
            out = self.loss_fn(z1, z2, levels, step=self.global_step, output_dict=True)
            loss = out.loss
            for name in self.loss_fn.pair_names:
                row[f"loss/{name}"] = float(out.pair_losses[name].detach())
            miner = self.loss_fn.miner
            if isinstance(miner, SelfPacedHardNegativeMiner) and miner.last_stats is not None:
                row["k_t"] = float(miner.last_stats.count)
                row["k_t_fraction"] = miner.last_stats.count / max(miner.last_stats.total, 1)
                selected = sum(c.get("selected_anchors", 0) for c in out.counts.values())
                anchors = sum(c["anchors"] for c in out.counts.values())
                row["selected_fraction"] = selected / max(anchors, 1)
        row["loss"] = float(loss.detach())
        row["lr"] = float(self.trainer.optimizers[0].param_groups[0]["lr"]) if self._trainer else self.lr
        self.step_log.append(row)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        """AdamW (the paper's Adam, with decoupled weight decay as r(w)) and cosine decay over ``max_steps``."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.max_steps, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
