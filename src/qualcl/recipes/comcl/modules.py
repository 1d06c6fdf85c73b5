"""CoMCL's losses and Lightning modules: contrastive pre-training on patches, and DR-grading fine-tuning."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qualcl.heads.projection import ProjectionHead
from qualcl.losses import MultiLevelInfoNCE, NTXentLoss
from qualcl.models import Encoder
from qualcl.recipes.comcl.config import ComclConfig
from qualcl.recipes.comcl.data import PatchAugmentation, level_names
from qualcl.recipes.modules import GradingFineTuning, History, RecipeModule, gathering
from qualcl.samplers import CosineCountSchedule, SelfPacedHardNegativeMiner

__all__ = ["ContrastivePretraining", "GradingFineTuning", "pretraining_module"]


class ContrastivePretraining(RecipeModule):
    """Encoder + projection head trained with :class:`MultiLevelInfoNCE` (or SimCLR's NT-Xent: basic CL).

    AdamW at ``lr`` with weight decay ``r(w)``, cosine decay over ``max_steps`` (the temperature is the
    loss's own). Batches of ``(uint8 view1, uint8 view2, levels, colour
    params 1, 2)`` (:class:`~qualcl.recipes.comcl.data.PatchPairDataset`) get ``augment``'s photometric
    part here, on their device; batches of float views are used as they are. Each step's history row
    holds the loss, every pair's loss (``loss/<pair>``), the learning rate and, with a self-paced
    miner, ``K_t``, ``K_t`` as a fraction of its start and the fraction of anchors the miner kept.
    """

    def __init__(
        self,
        encoder: Encoder,
        head: ProjectionHead,
        loss: MultiLevelInfoNCE | NTXentLoss,
        *,
        lr: float,
        weight_decay: float,
        max_steps: int,
        augment: PatchAugmentation | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.head, self.augment, self.loss_fn = encoder, head, augment, loss
        self.lr, self.weight_decay, self.max_steps = lr, weight_decay, max_steps
        pairs = loss.pair_names if isinstance(loss, MultiLevelInfoNCE) else ()
        self.history = History(
            every="step",
            curves={"loss": "total", **{f"loss/{name}": name for name in pairs}},
            metrics={"k_t_fraction": "K_t / delta", "selected_fraction": "selected anchors"},
            extra=("k_t", "lr"),
            title="Contrastive pre-training",
            metrics_label="self-paced mining (fraction)",
        )

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
        terms: dict[str, float | Tensor] = {}
        if isinstance(self.loss_fn, NTXentLoss):
            loss: Tensor = self.loss_fn(z1, z2)
        else:
            out = self.loss_fn(z1, z2, levels, step=self.global_step, output_dict=True)
            loss = out.loss
            terms.update({f"loss/{name}": out.pair_losses[name] for name in self.loss_fn.pair_names})
            miner = self.loss_fn.miner
            if isinstance(miner, SelfPacedHardNegativeMiner) and miner.last_stats is not None:
                selected = sum(c.get("selected_anchors", 0) for c in out.counts.values())
                anchors = sum(c["anchors"] for c in out.counts.values())
                terms["k_t"] = miner.last_stats.count
                terms["k_t_fraction"] = miner.last_stats.count / max(miner.last_stats.total, 1)
                terms["selected_fraction"] = selected / max(anchors, 1)
        lr = float(self.trainer.optimizers[0].param_groups[0]["lr"]) if self._trainer else self.lr
        self.record(loss=loss, lr=lr, **terms)
        return loss

    def configure_optimizers(self) -> Any:
        """AdamW (the paper's Adam, with decoupled weight decay as r(w)) and cosine decay over ``max_steps``."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.max_steps, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def pretraining_module(
    config: ComclConfig, encoder: Encoder, *, augment: PatchAugmentation | None = None
) -> ContrastivePretraining:
    """The pre-training stage's module: ``encoder`` + a new projection head + the configured loss.

    The loss is CoMCL's multi-level InfoNCE (with the self-paced miner if configured) or SimCLR's
    NT-Xent; under DDP its negatives and the miner's threshold come from every rank
    (:func:`~qualcl.recipes.modules.gathering`), so a step equals one process on the global batch.
    """
    cfg, gather = config.pretrain, gathering(config.trainer)
    loss: MultiLevelInfoNCE | NTXentLoss = NTXentLoss(cfg.temperature, gather_distributed=gather)
    if cfg.method == "comcl":
        schedule = CosineCountSchedule(None, cfg.steps)
        miner = SelfPacedHardNegativeMiner(schedule, threshold=cfg.spl_threshold, gather_distributed=gather)
        loss = MultiLevelInfoNCE(
            pairs=cfg.pairs,
            level_names=level_names(cfg.pairs),
            temperature=cfg.temperature,
            negatives_from=cfg.negatives_from,
            miner=miner if cfg.miner == "self_paced" else None,
            gather_distributed=gather,
        )
    width = encoder.num_features
    return ContrastivePretraining(
        encoder,
        ProjectionHead((width, width, cfg.projection_dim)),
        loss,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        max_steps=cfg.steps,
        augment=augment,
    )
