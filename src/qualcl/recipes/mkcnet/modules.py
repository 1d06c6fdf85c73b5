"""MKCNet's Lightning module: the two-stage epoch (Task Net pass, then Meta Learner pass) and validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from qualcl.distributed import all_reduce_sum
from qualcl.functional import batch_entropy
from qualcl.heads import MetaLabelGenerator
from qualcl.losses import FocalLoss
from qualcl.metrics import diagnosis_metrics
from qualcl.optim import MetaAuxiliaryOptimizer
from qualcl.optim.meta_auxiliary import TaskForward
from qualcl.recipes.mkcnet.config import TrainConfig
from qualcl.recipes.mkcnet.model import TaskNet, TaskOutput, mask_labels
from qualcl.recipes.modules import History, RecipeModule

__all__ = ["MkcnetTraining", "global_batch_entropy", "step_lr"]

Batch = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def step_lr(base: float, epoch: int, step: int, gamma: float) -> float:
    """StepLR as a function of the epoch, ``base · gamma ** (epoch // step)``: a resumed run gets the same schedule."""
    return base * gamma ** (epoch // max(step, 1))


def _total(losses: dict[str, Tensor]) -> Tensor:
    return torch.stack(list(losses.values())).sum()


def global_batch_entropy(probs: Tensor) -> Tensor:
    """``H(mean_i p_i)`` with the mean over the rows of every rank (the same value on every rank, gradients to all).

    MKCNet's batch-global outer-loss term on the loss protocol: sums and counts are all-reduced with the
    differentiable :func:`~qualcl.distributed.all_reduce_sum`; on one process :func:`~qualcl.functional.batch_entropy`.
    """
    total = all_reduce_sum(probs.sum(0))
    count = all_reduce_sum(probs.new_tensor(float(probs.shape[0])))
    return batch_entropy((total / count).unsqueeze(0))


class MkcnetTraining(RecipeModule):
    r"""MKCNet's training loop as a Lightning module (manual optimisation, two optimisers).

    Each epoch has two passes over the training set (:class:`~qualcl.recipes.mkcnet.data.TwoPassBatchSampler`;
    every batch carries its pass id):

    1. **Task Net** (``θ``): ``y_ω = M_φ(x, j)`` (detached), ``L_θ = FL(p_d, y_d) + FL(p_q, y_q) +
       FL(p_ω, y_ω) / L``; one SGD step of the Task Net.
    2. **Meta Learner** (``φ``): :class:`~qualcl.optim.MetaAuxiliaryOptimizer` with
       ``L_inner = L_θ`` (``y_ω`` attached) at ``θ`` and ``L_outer = FL(p_d, y_d) + FL(p_q, y_q) −
       w_ent · H(mean_i y_ω,i)`` at ``θ̃ = θ − α(∇θ L_inner + wd · θ)``, ``α`` the Task Net's current
       learning rate; one SGD step of the Meta Learner, ``θ`` unchanged (rows of each loss: ``config.meta_batch``).

    Variants without a Meta Learner have one pass and ``L_θ = FL(p_d, y_d) [+ FL(p_q, y_q)]``. Both
    learning rates follow StepLR; validation AUC (one-vs-one on probabilities) selects the best checkpoint.

    Args:
        task: The Task Net.
        meta: The Meta Learner, or ``None``.
        config: Optimisation settings.
        slice_length: ``L`` (the auxiliary loss is divided by it, as the official code).
        mask_by: ``"joint"``, ``"quality"`` or ``"diagnosis"`` (which labels the mask sees).
        legacy_auc: Hard-label AUC on binary sets in validation.
        gather_distributed: Under DDP, every loss follows the loss protocol (focal losses averaged over
            every rank's images, :func:`global_batch_entropy` over every rank's rows), so both steps
            equal one process on the concatenated batch, for any per-rank batch sizes.
    """

    history = History(
        curves={
            "loss_diagnosis": "L_D",
            "loss_quality": "L_Q",
            "loss_auxiliary": "L_Ω / L",
            "meta_outer_loss": "meta outer loss",
            "aux_entropy": "H(mean y_ω)",
        },
        metrics={"val_auc": "val AUC", "val_accuracy": "val accuracy", "val_macro_f1": "val macro F1"},
        extra=("loss", "meta_grad_norm", "lr"),
        title="MKCNet training",
        ylabel="focal loss / nats",
        metrics_label="AUC / ACC / F1",
    )
    monitor = "auc"

    def __init__(
        self,
        task: TaskNet,
        meta: MetaLabelGenerator | None,
        config: TrainConfig,
        *,
        slice_length: int,
        mask_by: str = "joint",
        legacy_auc: bool = False,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.focal = FocalLoss(config.focal_gamma, gather_distributed=gather_distributed)
        self.task, self.meta, self.config = task, meta, config
        self.slice_length, self.mask_by, self.legacy_auc = slice_length, mask_by, legacy_auc
        self._meta_step: MetaAuxiliaryOptimizer | None = None
        self._last_entropy = torch.zeros(())

    # ------------------------------------------------------------------ losses
    def _targets(self, images: Tensor, diagnosis: Tensor, quality: Tensor) -> Tensor:
        assert self.meta is not None
        target: Tensor = self.meta(images, *mask_labels(self.mask_by, diagnosis, quality))
        return target

    def task_losses(
        self, out: TaskOutput, diagnosis: Tensor, quality: Tensor, target: Tensor | None
    ) -> dict[str, Tensor]:
        """``L_D``, ``L_Q`` and ``L_Ω`` (those the variant has) of Task Net outputs: every focal loss of MKCNet."""
        losses = {"diagnosis": self.focal(out.diagnosis, diagnosis)}
        if out.quality is not None:
            losses["quality"] = self.focal(out.quality, quality)
        if out.co_embedding is not None and target is not None:
            losses["auxiliary"] = self.focal(out.co_embedding, target) / self.slice_length
        return losses

    def _optimizer_list(self) -> list[Any]:
        """The Lightning-wrapped optimisers: ``[task]`` or ``[task, meta]``."""
        optimizers = self.optimizers()
        return list(optimizers) if isinstance(optimizers, list) else [optimizers]

    # ------------------------------------------------------------------ training
    def task_step_loss(self, images: Tensor, diagnosis: Tensor, quality: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_θ`` of the Task Net pass and its terms: the Meta Learner's targets (detached), then the focal losses."""
        with torch.no_grad():
            target = self._targets(images, diagnosis, quality) if self.meta is not None else None
        losses = self.task_losses(self.task(images), diagnosis, quality, target)
        return _total(losses), losses

    def meta_closures(
        self, images: Tensor, diagnosis: Tensor, quality: Tensor
    ) -> tuple[Callable[[TaskForward], Tensor], Callable[[TaskForward], Tensor]]:
        """The Meta Learner step's ``(inner, outer)`` loss closures on a batch, on the loss protocol.

        Each closure runs the Meta Learner itself (the finite-difference mode frees each graph).
        """
        half = images.shape[0] // 2 if self.config.meta_batch == "split" else None  # MAXL: inner, outer halves
        x_in, d_in, q_in = (t[:half] for t in (images, diagnosis, quality))
        x_out, d_out, q_out = (t[half:] for t in (images, diagnosis, quality))

        def inner(forward: TaskForward) -> Tensor:
            target = self._targets(x_in, d_in, q_in)
            return _total(self.task_losses(forward(x_in), d_in, q_in, target))

        def outer(forward: TaskForward) -> Tensor:
            primary = _total(self.task_losses(forward(x_out), d_out, q_out, None))
            entropy = global_batch_entropy(self._targets(x_in, d_in, q_in))
            self._last_entropy = entropy.detach()
            return primary - self.config.entropy_weight * entropy

        return inner, outer

    def _meta_update(self, images: Tensor, diagnosis: Tensor, quality: Tensor) -> Tensor:
        if self._meta_step is None:
            assert self.meta is not None
            task_opt, meta_opt = self._optimizer_list()
            self._meta_step = MetaAuxiliaryOptimizer(
                self.task,
                self.meta,
                meta_opt.optimizer,
                inner_lr=lambda: float(task_opt.optimizer.param_groups[0]["lr"]),
                weight_decay=self.config.weight_decay,
                mode=self.config.meta_mode,
            )
        stats = self._meta_step.step(*self.meta_closures(images, diagnosis, quality))
        outer, norm = stats["outer_loss"], stats["meta_grad_norm"]
        self.record(meta_outer_loss=outer, meta_grad_norm=norm, aux_entropy=self._last_entropy)
        return outer

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One batch of the stage its pass id names (0: Task Net, 1: Meta Learner)."""
        images, diagnosis, quality, _, passes = batch
        if int(passes[0]) != 0:  # the Meta Learner's pass
            loss = self._meta_update(images, diagnosis, quality)
            self.log("train/meta_loss", loss, prog_bar=True)
            return loss
        loss, losses = self.task_step_loss(images, diagnosis, quality)
        optimizer = self._optimizer_list()[0]
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.record(loss=loss, **{f"loss_{k}": v for k, v in losses.items()})
        return loss.detach()

    def on_train_epoch_start(self) -> None:
        """Set both learning rates for this epoch (StepLR)."""
        for optimizer, base in zip(self._optimizer_list(), [self.config.lr, self.config.meta_lr], strict=False):
            for group in optimizer.optimizer.param_groups:
                group["lr"] = step_lr(base, self.current_epoch, self.config.lr_step, self.config.lr_gamma)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Collect diagnosis probabilities."""
        images, diagnosis, _, _, _ = batch
        self.collect(probs=torch.softmax(self.task(images).diagnosis.float(), dim=1), target=diagnosis)

    def validation_metrics(self, outputs: dict[str, Tensor]) -> dict[str, float]:
        """AUC, accuracy and macro F1 of the whole validation set."""
        metrics = diagnosis_metrics(outputs["probs"], outputs["target"], legacy_auc=self.legacy_auc)
        return {key: metrics[key] for key in ("auc", "accuracy", "macro_f1")}

    def epoch_extras(self) -> dict[str, float]:
        """The Task Net's learning rate of the epoch."""
        return {"lr": step_lr(self.config.lr, self.current_epoch, self.config.lr_step, self.config.lr_gamma)}

    def configure_optimizers(self) -> Any:
        """SGD for the Task Net and, with a Meta Learner, SGD for it (learning rates set per epoch)."""
        cfg = self.config
        task = torch.optim.SGD(self.task.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        if self.meta is None:
            return task
        meta = torch.optim.SGD(self.meta.parameters(), lr=cfg.meta_lr, weight_decay=cfg.meta_weight_decay)
        return [task, meta]
