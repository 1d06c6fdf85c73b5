"""Lightning modules: LD pre-training (and its baselines), shape-guided LD, segmentation transfer."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl.data.views import LocalBatch, LocalDiscriminationViews, LocalViews, realign_grid
from qualcl.distributed import gather_no_grad
from qualcl.functional import (
    assignment_entropy,
    grid_items,
    mixup_targets,
    patch_grid,
    soft_dice_loss,
)
from qualcl.heads import ProjectionHead
from qualcl.losses import (
    InfoNCE,
    MixupConsistencyLoss,
    NTXentLoss,
    PatchDiscriminationLoss,
    RegionDiscriminationLoss,
)
from qualcl.metrics import binarize, segmentation_metrics
from qualcl.recipes.local_discrimination.config import PretrainConfig, ShapeConfig
from qualcl.recipes.local_discrimination.model import LDNet, SegmentationNet, ShapeDiscriminator

__all__ = ["LDPretraining", "SegmentationTransfer", "ShapeGuidedTraining", "pretraining_losses"]


def _schedule(optimizer: torch.optim.Optimizer, halve_every: int) -> Any:
    return {
        "optimizer": optimizer,
        "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=halve_every, gamma=0.5),
    }


def pretraining_losses(
    net: LDNet,
    batch: LocalBatch,
    config: PretrainConfig,
    *,
    method: str,
    projection: nn.Module | None = None,
    gather_distributed: bool = False,
) -> tuple[dict[str, Tensor], Tensor]:
    """The loss terms of one batch for ``method``, unweighted, and the assignments of the first 4B images.

    ``"pd"``: patch discrimination + mixup consistency (LD stage 1); ``"ld"``: + region
    discrimination + assignment entropy (stage 2); ``"simclr"``: NT-Xent of the pooled encoder
    features (projected) of each image's two views; ``"dense"``: InfoNCE between each realigned
    patch cell of the first views and the same cell of the second views, every other second-view
    cell a negative (DenseCL-style, with the correspondence known from the recorded turns).

    With ``gather_distributed`` (:func:`qualcl.recipes.modules.gathering`) the contrastive terms
    contrast with the items of every rank and the region prototypes are means over every rank's
    images, so under DDP a step equals one process on the concatenated batch; the entropy is a
    per-pixel mean, exact because every rank holds a batch of the same size (``drop_last``).
    """
    images = batch.images
    b = images.shape[0] // 5
    gather = gather_distributed
    if method == "simclr":
        assert projection is not None
        pooled = net.encoder(images[: 4 * b])
        z = projection(pooled)
        first, second = z[: 2 * b], z[2 * b :]
        nt_xent = NTXentLoss(config.temperature, gather_distributed=gather)
        return {"nt_xent": nt_xent(first, second)}, images.new_zeros(0)
    out = net(images)
    grids = patch_grid(out.embeddings, config.grid)
    turned = grids[2 * b : 4 * b]
    realigned = realign_grid(turned, batch.flip.transpose(0, 1).reshape(-1), batch.rot.transpose(0, 1).reshape(-1))
    grids = torch.cat([grids[: 2 * b], realigned, grids[4 * b :]])
    if method == "dense":
        anchors, positives = grid_items(grids[: 2 * b]), grid_items(grids[2 * b : 4 * b])
        loss = InfoNCE(config.temperature, gather_distributed=gather)(anchors, positives)
        return {"dense": loss}, out.assignments[: 4 * b]
    # the two views' cells [x1; x2] (view2=None: stacked); under DDP each view is gathered over ranks
    pd, mixup = (PatchDiscriminationLoss, MixupConsistencyLoss)
    terms = {
        "pd": pd(config.temperature, gather_distributed=gather)(grid_items(grids[: 4 * b])),
        "mixup": mixup(config.temperature, gather_distributed=gather)(
            grid_items(grids[4 * b :]), grid_items(mixup_targets(grids[:b], grids[b : 2 * b], batch.weight))
        ),
    }
    if method == "ld":
        region = RegionDiscriminationLoss(config.region_temperature, gather_distributed=gather)
        terms["region"] = region(out.embeddings[: 4 * b], out.assignments[: 4 * b])
        terms["entropy"] = assignment_entropy(out.assignments[: 4 * b])
    return terms, out.assignments[: 4 * b]


class _EpochRows:
    """Running means of the loss terms over an epoch, one history row per epoch (kept across resume)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.rows: list[dict[str, float]] = []

    def add(self, terms: dict[str, Tensor], total: Tensor) -> None:
        for name, value in {**terms, "loss": total}.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())
        self.count += 1

    def close(self, epoch: int, **extra: float) -> None:
        if self.count:
            self.rows.append({"epoch": float(epoch), **{k: v / self.count for k, v in self.sums.items()}, **extra})
        self.sums, self.count = {}, 0

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}

    def load(self, state: dict[str, Any]) -> None:
        self.sums, self.count = dict(state.get("sums", {})), int(state.get("count", 0))


class _SelfSupervisedStage(L.LightningModule):
    """What both pre-training modules share: per-epoch loss rows kept across resume, train mode every epoch."""

    #: Checkpoint key of the running sums of an unfinished epoch.
    statistics_key = "ld_epoch_statistics"

    def __init__(self) -> None:
        super().__init__()
        self.log_rows = _EpochRows()

    @property
    def epoch_log(self) -> list[dict[str, float]]:
        """One row of mean loss terms per finished epoch."""
        return self.log_rows.rows

    def on_train_epoch_start(self) -> None:
        """Train mode, whatever mode the network arrived in."""
        self.train()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the running sums of an unfinished epoch."""
        checkpoint[self.statistics_key] = self.log_rows.state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore them, so that a resumed epoch's history row covers all its batches."""
        self.log_rows.load(checkpoint.get(self.statistics_key, {}))


class LDPretraining(_SelfSupervisedStage):
    r"""One pre-training stage: ``"pd"`` (stage 1), ``"ld"`` (stage 2) or a baseline (``"simclr"``, ``"dense"``).

    Stage 1: ``L = L_pd + L_mix``; stage 2: ``L = L_pd + L_mix + 10·L_region + 0.1·L_entropy``
    (the weights of :class:`PretrainConfig`); Adam, the rate halved every ``halve_every`` epochs.
    The batches are :class:`~qualcl.data.LocalViews` collated by
    :meth:`~qualcl.data.LocalDiscriminationViews.collate`; the colour jitter, mixup and
    normalisation run here on the batch's device (:meth:`~qualcl.data.LocalDiscriminationViews.assemble`).

    Args:
        net: The network.
        views: The training views (their :meth:`assemble`).
        config: Pre-training settings.
        method: ``"pd"``, ``"ld"``, ``"simclr"`` or ``"dense"``.
        gather_distributed: Under DDP, losses over every rank's batch (see :func:`pretraining_losses`).
    """

    def __init__(
        self,
        net: LDNet,
        views: LocalDiscriminationViews,
        config: PretrainConfig,
        method: str,
        *,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed
        if method not in ("pd", "ld", "simclr", "dense"):
            raise ValueError(f"method must be 'pd', 'ld', 'simclr' or 'dense', got {method!r}")
        self.net = net
        self.views = views
        self.config = config
        self.method = method
        self.projection = ProjectionHead([net.encoder.num_features, 128, 128]) if method == "simclr" else None
        self.weights = {"region": config.region_weight, "entropy": config.entropy_weight}

    def loss(self, batch: LocalBatch) -> tuple[dict[str, Tensor], Tensor]:
        """The loss terms of an assembled batch and their weighted sum (what a step minimises)."""
        terms, _ = pretraining_losses(
            self.net,
            batch,
            self.config,
            method=self.method,
            projection=self.projection,
            gather_distributed=self.gather_distributed,
        )
        return terms, torch.stack([self.weights.get(name, 1.0) * value for name, value in terms.items()]).sum()

    def training_step(self, batch: LocalViews, batch_idx: int) -> Tensor:
        """One step on a collated batch."""
        terms, total = self.loss(self.views.assemble(batch, self.device))
        self.log("train/loss", total.detach(), prog_bar=True)
        self.log_rows.add(terms, total)
        return total

    def on_train_epoch_end(self) -> None:
        """Record the epoch's mean loss terms and learning rate."""
        self.log_rows.close(self.current_epoch, lr=float(self.trainer.optimizers[0].param_groups[0]["lr"]))

    def configure_optimizers(self) -> Any:
        """Adam with the rate halved every ``halve_every`` epochs."""
        return _schedule(torch.optim.Adam(self.parameters(), lr=self.config.lr), self.config.halve_every)


class ShapeGuidedTraining(_SelfSupervisedStage):
    r"""LD stage 2 with an adversarial shape prior: cluster channel 0 should look like a prior mask.

    Generator step: ``L_pd + L_mix + 10·L_region + 0.1·L_entropy + w·BCE(D(a_0), 1)``;
    discriminator step: ``BCE(D(prior), 1) + BCE(D(a_0.detach()), 0)`` with its own Adam at
    ``ratio × lr`` (manual optimisation, one step of each per batch, as the code alternates them).

    Args:
        net: The network (``K`` clusters).
        views: The training views.
        priors: ``(P, S, S)`` bool prior masks.
        config: Pre-training settings (schedule and the LD weights).
        shape: Shape-guided settings.
        gather_distributed: Under DDP, LD's losses over every rank's batch (see :func:`pretraining_losses`).
    """

    statistics_key = "shape_epoch_statistics"

    def __init__(
        self,
        net: LDNet,
        views: LocalDiscriminationViews,
        priors: Tensor,
        config: PretrainConfig,
        shape: ShapeConfig,
        *,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed
        if priors.ndim != 3 or priors.shape[0] == 0:
            raise ValueError(f"shape-guided training needs (P, S, S) prior masks, got shape {tuple(priors.shape)}")
        self.automatic_optimization = False
        self.net = net
        self.views = views
        self.config = config
        self.shape = shape
        self.discriminator = ShapeDiscriminator(leaky_quirk=shape.leaky_quirk)
        self.register_buffer("priors", priors.float()[:, None], persistent=False)

    def training_step(self, batch: LocalViews, batch_idx: int) -> None:
        """A generator step, then a discriminator step."""
        net_opt, disc_opt = self.optimizers()  # type: ignore[misc,attr-defined]
        assembled = self.views.assemble(batch, self.device)
        terms, assignments = pretraining_losses(
            self.net, assembled, self.config, method="ld", gather_distributed=self.gather_distributed
        )
        fake = assignments[:, :1]
        real_target = torch.ones(fake.shape[0], device=self.device)
        terms["adversarial"] = F.binary_cross_entropy_with_logits(self.discriminator(fake), real_target)
        weights = {
            "region": self.config.region_weight,
            "entropy": self.config.entropy_weight,
            "adversarial": self.shape.adversarial_weight,
        }
        total = torch.stack([weights.get(name, 1.0) * value for name, value in terms.items()]).sum()
        net_opt.zero_grad()
        self.manual_backward(total)
        net_opt.step()
        priors: Tensor = self.priors  # type: ignore[assignment]
        g = torch.Generator(device=priors.device).manual_seed(int(self.global_step))
        pick = torch.randint(int(priors.shape[0]), (fake.shape[0],), generator=g, device=priors.device)
        real = priors[pick]
        if real.shape[-2:] != fake.shape[-2:]:
            real = F.interpolate(real, size=fake.shape[-2:], mode="nearest")
        d_real, d_fake = self.discriminator(real), self.discriminator(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(
            d_real, torch.ones_like(d_real)
        ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        disc_opt.zero_grad()
        self.manual_backward(d_loss)
        disc_opt.step()
        terms["discriminator"] = d_loss
        self.log("train/loss", total.detach(), prog_bar=True)
        self.log_rows.add(terms, total)

    def on_train_epoch_end(self) -> None:
        """Record the epoch; halve both rates every ``halve_every`` epochs."""
        for schedule in self.lr_schedulers():  # type: ignore[union-attr]
            schedule.step()
        self.log_rows.close(self.current_epoch)

    def configure_optimizers(self) -> Any:
        """Adam for the network, Adam at ``ratio × lr`` for the discriminator, both halved on schedule."""
        lr = self.config.lr
        net_opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        disc_opt = torch.optim.Adam(self.discriminator.parameters(), lr=lr * self.shape.discriminator_lr_ratio)
        step = self.config.halve_every
        return [net_opt, disc_opt], [
            torch.optim.lr_scheduler.StepLR(net_opt, step, 0.5),
            torch.optim.lr_scheduler.StepLR(disc_opt, step, 0.5),
        ]


class SegmentationTransfer(L.LightningModule):
    """Soft-Dice training of a :class:`SegmentationNet`, the encoder frozen or not; validation Dice selects the epoch.

    A frozen encoder gets no gradient and keeps its BatchNorm statistics (eval mode): only the new
    decoder learns. Validation logs ``val/dice``, the mean per-image Dice at threshold 0.5 over the
    validation images with foreground (torchmetrics, :func:`qualcl.metrics.segmentation_metrics`).

    Args:
        net: The segmentation network.
        lr: Adam learning rate.
        frozen: Freeze the encoder.
    """

    def __init__(self, net: SegmentationNet, *, lr: float, frozen: bool) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.frozen = frozen
        self.net.encoder.requires_grad_(not frozen)
        self.epoch_log: list[dict[str, float]] = []
        self._losses: list[float] = []
        self._val: list[tuple[Tensor, Tensor]] = []

    def on_train_epoch_start(self) -> None:
        """Train mode, but a frozen encoder in eval mode (its BatchNorm statistics untouched).

        Set every epoch, whatever mode the network arrived in (a stage before it, validation, or a
        reload), so that an interrupted and resumed stage trains exactly as an uninterrupted one.
        """
        self.net.train()
        if self.frozen:
            self.net.encoder.eval()

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        """Soft Dice of a batch."""
        images, masks, _ = batch
        loss = soft_dice_loss(self.net(images), masks)
        self._losses.append(float(loss.detach()))
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        """Collect the validation predictions."""
        images, masks, _ = batch
        self._val.append((binarize(self.net(images).float()), masks[:, 0] > 0.5))

    def on_validation_epoch_end(self) -> None:
        """Log the validation Dice and record the epoch."""
        if not self._val:
            return
        preds = gather_no_grad(torch.cat([p for p, _ in self._val])).cpu()
        target = gather_no_grad(torch.cat([t for _, t in self._val])).cpu()
        self._val.clear()
        dice = segmentation_metrics(preds, target)["dice"]
        dice = dice if dice == dice else 0.0
        self.log("val/dice", dice, prog_bar=True)
        if self.trainer.sanity_checking:
            return
        train = sum(self._losses) / max(len(self._losses), 1)
        self._losses.clear()
        self.epoch_log.append({"epoch": float(self.current_epoch), "train_loss": train, "val_dice": dice})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the trainable parameters."""
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the losses of an unfinished epoch."""
        checkpoint["transfer_epoch_losses"] = list(self._losses)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore them."""
        self._losses = [float(v) for v in checkpoint.get("transfer_epoch_losses", [])]
