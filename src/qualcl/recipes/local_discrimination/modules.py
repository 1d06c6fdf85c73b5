"""Lightning modules: LD pre-training (and its baselines), shape-guided LD, segmentation transfer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Adam
from torch.optim.lr_scheduler import StepLR

from qualcl.data.views import LocalBatch, LocalDiscriminationViews, LocalViews, realign_grid
from qualcl.distributed import gather_no_grad, gather_with_grad, rank, world_size
from qualcl.functional import assignment_entropy, grid_items, mixup_targets, patch_grid, soft_dice_loss
from qualcl.heads import ProjectionHead
from qualcl.losses import InfoNCE, MixupConsistencyLoss, NTXentLoss, PatchDiscriminationLoss, RegionDiscriminationLoss
from qualcl.metrics import binarize, segmentation_metrics
from qualcl.recipes.local_discrimination.config import PretrainConfig, ShapeConfig
from qualcl.recipes.local_discrimination.model import LDNet, SegmentationNet, ShapeDiscriminator
from qualcl.recipes.modules import History, RecipeModule

__all__ = ["LDPretraining", "SegmentationTransfer", "ShapeGuidedTraining", "build_losses", "pretraining_losses"]

#: Every loss term a stage may record, and its label in the stage's plot.
TERMS = {
    "pd": "patch discrimination",
    "mixup": "mixup consistency",
    "region": "region discrimination",
    "entropy": "assignment entropy",
    "nt_xent": "NT-Xent (SimCLR)",
    "dense": "dense InfoNCE",
}


def build_losses(config: PretrainConfig, *, gather: bool, per_image_dice: bool = False) -> dict[str, Any]:
    """Every loss of the recipe, built in one place: ``{term: callable}``.

    ``pd``, ``mixup``, ``region`` (LD), ``nt_xent`` (SimCLR), ``dense`` (dense InfoNCE), ``entropy``,
    ``adversarial`` (the shape stage's BCE on logits, both players) and ``dice`` (the transfer's
    :func:`qualcl.functional.soft_dice_loss`, one Dice over the batch unless ``per_image_dice``).

    With ``gather`` (:func:`qualcl.recipes.modules.gathering`) every batch-global term is computed
    on the global batch under DDP: the contrastive terms contrast with every rank's items, the
    region prototypes are means over every rank's images, and the batch Dice's sums run over every
    rank's pixels (its probabilities gathered with gradients), so a step equals one process on the
    concatenated batch. The entropy, the BCE and the per-image Dice are per-item means, exact under
    DDP's gradient averaging because every rank holds a batch of the same size (``drop_last``).

    Args:
        config: Pre-training settings (temperatures).
        gather: Gather across processes (no-op on one).
        per_image_dice: The transfer's Dice per image (``TransferConfig.per_image_dice``).
    """

    def dice(probs: Tensor, target: Tensor) -> Tensor:
        if gather and not per_image_dice:  # one Dice over every rank's pixels
            probs, target = gather_with_grad(probs)[0], gather_no_grad(target)
        return soft_dice_loss(probs, target, per_image=per_image_dice)

    return {
        "pd": PatchDiscriminationLoss(config.temperature, gather_distributed=gather),
        "mixup": MixupConsistencyLoss(config.temperature, gather_distributed=gather),
        "region": RegionDiscriminationLoss(config.region_temperature, gather_distributed=gather),
        "nt_xent": NTXentLoss(config.temperature, gather_distributed=gather),
        "dense": InfoNCE(config.temperature, gather_distributed=gather),
        "entropy": assignment_entropy,
        "adversarial": F.binary_cross_entropy_with_logits,
        "dice": dice,
    }


def pretraining_losses(
    net: LDNet,
    batch: LocalBatch,
    losses: Mapping[str, Any],
    *,
    grid: int,
    method: str,
    projection: nn.Module | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """The loss terms of one batch for ``method``, unweighted, and the assignments of the first 4B images.

    ``"pd"``: patch discrimination + mixup consistency (LD stage 1); ``"ld"``: + region
    discrimination + assignment entropy (stage 2); ``"simclr"``: NT-Xent of the pooled encoder
    features (projected) of each image's two views; ``"dense"``: InfoNCE between each realigned
    patch cell of the first views and the same cell of the second views, every other second-view
    cell a negative (DenseCL-style, with the correspondence known from the recorded turns).

    Args:
        net: The network.
        batch: An assembled batch (``[x1_1, x2_1, x1_2, x2_2, mixup]``, ``B`` images each).
        losses: :func:`build_losses`.
        grid: Patch grid side.
        method: ``"pd"``, ``"ld"``, ``"simclr"`` or ``"dense"``.
        projection: SimCLR's projection head.
    """
    images = batch.images
    b = images.shape[0] // 5
    if method == "simclr":
        assert projection is not None
        z = projection(net.encoder(images[: 4 * b]))
        return {"nt_xent": losses["nt_xent"](z[: 2 * b], z[2 * b :])}, images.new_zeros(0)
    out = net(images)
    grids = patch_grid(out.embeddings, grid)
    turned = grids[2 * b : 4 * b]
    realigned = realign_grid(turned, batch.flip.transpose(0, 1).reshape(-1), batch.rot.transpose(0, 1).reshape(-1))
    grids = torch.cat([grids[: 2 * b], realigned, grids[4 * b :]])
    if method == "dense":
        dense = losses["dense"](grid_items(grids[: 2 * b]), grid_items(grids[2 * b : 4 * b]))
        return {"dense": dense}, out.assignments[: 4 * b]
    # the two views' cells [x1; x2] (view2=None: stacked); under DDP each view is gathered over ranks
    terms = {
        "pd": losses["pd"](grid_items(grids[: 4 * b])),
        "mixup": losses["mixup"](
            grid_items(grids[4 * b :]), grid_items(mixup_targets(grids[:b], grids[b : 2 * b], batch.weight))
        ),
    }
    if method == "ld":
        terms["region"] = losses["region"](out.embeddings[: 4 * b], out.assignments[: 4 * b])
        terms["entropy"] = losses["entropy"](out.assignments[: 4 * b])
    return terms, out.assignments[: 4 * b]


def _weighted(terms: dict[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    return torch.stack([weights.get(name, 1.0) * value for name, value in terms.items()]).sum()


class LDPretraining(RecipeModule):
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
        gather_distributed: Under DDP, losses over every rank's batch (see :func:`build_losses`).
    """

    history = History(
        curves=TERMS,
        metrics={"loss": "total (weighted)"},
        extra=("lr",),
        ylabel="loss term",
        metrics_label="total loss",
    )

    def __init__(
        self,
        net: LDNet,
        views: LocalDiscriminationViews,
        config: PretrainConfig,
        method: str,
        *,
        gather_distributed: bool = False,
    ) -> None:
        if method not in ("pd", "ld", "simclr", "dense"):
            raise ValueError(f"method must be 'pd', 'ld', 'simclr' or 'dense', got {method!r}")
        super().__init__()
        self.net, self.views, self.config, self.method = net, views, config, method
        self.losses = build_losses(config, gather=gather_distributed)
        self.weights = {"region": config.region_weight, "entropy": config.entropy_weight}
        self.projection = ProjectionHead([net.encoder.num_features, 128, 128]) if method == "simclr" else None

    def loss(self, batch: LocalBatch) -> tuple[dict[str, Tensor], Tensor]:
        """The loss terms of an assembled batch and their weighted sum (what a step minimises)."""
        terms, _ = pretraining_losses(
            self.net, batch, self.losses, grid=self.config.grid, method=self.method, projection=self.projection
        )
        return terms, _weighted(terms, self.weights)

    def on_train_epoch_start(self) -> None:
        """Train mode, whatever mode the network arrived in."""
        self.train()

    def training_step(self, batch: LocalViews, batch_idx: int) -> Tensor | None:
        """One step on a collated batch."""
        terms, total = self.loss(self.views.assemble(batch, self.device))
        self.record(**terms, loss=total)
        return total

    def epoch_extras(self) -> dict[str, float]:
        """The learning rate the epoch ends with."""
        return {"lr": float(self.trainer.optimizers[0].param_groups[0]["lr"])}

    def configure_optimizers(self) -> Any:
        """Adam with the rate halved every ``halve_every`` epochs."""
        optimizer = Adam(self.parameters(), lr=self.config.lr)
        return {"optimizer": optimizer, "lr_scheduler": StepLR(optimizer, step_size=self.config.halve_every, gamma=0.5)}


class ShapeGuidedTraining(LDPretraining):
    r"""LD stage 2 (``method="ld"``) with an adversarial shape prior: cluster channel 0 should look like a prior mask.

    Generator step: ``L_pd + L_mix + 10·L_region + 0.1·L_entropy + w·BCE(D(a_0), 1)``;
    discriminator step: ``BCE(D(prior), 1) + BCE(D(a_0.detach()), 0)`` with its own Adam at
    ``ratio × lr`` (manual optimisation, one step of each per batch, as the code alternates them).
    The prior masks of a step are drawn for the global batch from a generator seeded by the step
    alone, and each rank takes its share (:meth:`draw_priors`), so under DDP a step equals one
    process on the concatenated batch.

    Args:
        net: The network (``K`` clusters).
        views: The training views.
        priors: ``(P, S, S)`` bool prior masks.
        config: Pre-training settings (schedule and the LD weights).
        shape: Shape-guided settings.
        gather_distributed: Under DDP, LD's losses over every rank's batch (see :func:`build_losses`).
    """

    history = replace(
        LDPretraining.history,
        curves={**TERMS, "adversarial": "adversarial (generator)", "discriminator": "discriminator"},
    )

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
        if priors.ndim != 3 or priors.shape[0] == 0:
            raise ValueError(f"shape-guided training needs (P, S, S) prior masks, got shape {tuple(priors.shape)}")
        super().__init__(net, views, config, "ld", gather_distributed=gather_distributed)
        self.automatic_optimization, self.shape = False, shape
        self.weights["adversarial"] = shape.adversarial_weight
        self.discriminator = ShapeDiscriminator(leaky_quirk=shape.leaky_quirk)
        self.register_buffer("priors", priors.float()[:, None], persistent=False)

    def generator_loss(self, batch: LocalBatch) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """LD's terms and the adversarial term of an assembled batch, their weighted sum, and cluster channel 0."""
        terms, assignments = pretraining_losses(self.net, batch, self.losses, grid=self.config.grid, method="ld")
        fake = assignments[:, :1]
        logits = self.discriminator(fake)
        terms["adversarial"] = self.losses["adversarial"](logits, torch.ones_like(logits))
        return terms, _weighted(terms, self.weights), fake

    def draw_priors(self, count: int, step: int) -> Tensor:
        """This rank's ``count`` prior masks of step ``step``, ``(count, 1, S, S)``.

        The ``count × W`` masks of the global batch are drawn from a generator seeded by ``step``
        (the same on every rank) and rank ``r`` takes the ``r``-th block: the ranks together draw
        what one process draws for the concatenated batch.
        """
        priors: Tensor = self.priors  # type: ignore[assignment]
        g = torch.Generator(device=priors.device).manual_seed(step)
        pick = torch.randint(int(priors.shape[0]), (count * world_size(),), generator=g, device=priors.device)
        return priors[pick[rank() * count : (rank() + 1) * count]]

    def discriminator_loss(self, fake: Tensor, step: int) -> Tensor:
        """``BCE(D(prior), 1) + BCE(D(fake), 0)`` with the priors of step ``step`` (:meth:`draw_priors`)."""
        real = self.draw_priors(fake.shape[0], step)
        if real.shape[-2:] != fake.shape[-2:]:
            real = F.interpolate(real, size=fake.shape[-2:], mode="nearest")
        d_real, d_fake = self.discriminator(real), self.discriminator(fake.detach())
        bce = self.losses["adversarial"]
        loss: Tensor = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        return loss

    def training_step(self, batch: LocalViews, batch_idx: int) -> None:
        """A generator step, then a discriminator step."""
        net_opt, disc_opt = self.optimizers()  # type: ignore[misc,attr-defined]
        terms, total, fake = self.generator_loss(self.views.assemble(batch, self.device))
        net_opt.zero_grad()
        self.manual_backward(total)
        net_opt.step()
        d_loss = self.discriminator_loss(fake, int(self.global_step))
        disc_opt.zero_grad()
        self.manual_backward(d_loss)
        disc_opt.step()
        self.record(**terms, discriminator=d_loss, loss=total)

    def on_train_epoch_end(self) -> None:
        """Halve both rates every ``halve_every`` epochs, then record the epoch (as the code's order)."""
        for schedule in self.lr_schedulers():  # type: ignore[union-attr]
            schedule.step()
        super().on_train_epoch_end()

    def configure_optimizers(self) -> Any:
        """Adam for the network, Adam at ``ratio × lr`` for the discriminator, both halved on schedule."""
        lr, ratio = self.config.lr, self.shape.discriminator_lr_ratio
        optimizers = [Adam(self.net.parameters(), lr=lr), Adam(self.discriminator.parameters(), lr=lr * ratio)]
        return optimizers, [StepLR(optimizer, self.config.halve_every, 0.5) for optimizer in optimizers]


class SegmentationTransfer(RecipeModule):
    """Soft-Dice training of a :class:`SegmentationNet`, the encoder frozen or not; validation Dice selects the epoch.

    A frozen encoder gets no gradient and keeps its BatchNorm statistics (eval mode): only the new
    decoder learns. Validation logs ``val/dice``, the mean per-image Dice at threshold 0.5 over the
    validation images with foreground (torchmetrics, :func:`qualcl.metrics.segmentation_metrics`).

    Args:
        net: The segmentation network.
        lr: Adam learning rate.
        frozen: Freeze the encoder.
        loss: The soft-Dice loss (``build_losses(...)["dice"]``).
    """

    history = History(curves={"loss": "train soft-Dice loss"}, metrics={"val_dice": "val Dice"}, metrics_label="Dice")
    monitor = "dice"

    def __init__(
        self, net: SegmentationNet, *, lr: float, frozen: bool, loss: Callable[[Tensor, Tensor], Tensor]
    ) -> None:
        super().__init__()
        self.net, self.lr, self.frozen = net, lr, frozen
        self.dice_loss = loss
        self.net.encoder.requires_grad_(not frozen)

    def on_train_epoch_start(self) -> None:
        """Train mode, but a frozen encoder in eval mode (its BatchNorm statistics untouched).

        Set every epoch, whatever mode the network arrived in (a stage before it, validation, a reload),
        so that a resumed stage trains exactly as an uninterrupted one.
        """
        self.net.train()
        if self.frozen:
            self.net.encoder.eval()

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        """Soft Dice of a batch."""
        images, masks, _ = batch
        loss = self.dice_loss(self.net(images), masks)
        self.record(loss=loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        """Collect the validation predictions."""
        images, masks, _ = batch
        self.collect(preds=binarize(self.net(images).float()), target=masks[:, 0] > 0.5)

    def validation_metrics(self, outputs: dict[str, Tensor]) -> dict[str, float]:
        """The mean per-image Dice of the validation images with foreground."""
        return {"dice": segmentation_metrics(outputs["preds"], outputs["target"])["dice"]}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the trainable parameters."""
        return Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)
