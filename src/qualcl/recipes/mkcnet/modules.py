"""MKCNet's Lightning module: the two-stage epoch (Task Net pass, then Meta Learner pass) and validation."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from qualcl.distributed import gather_no_grad
from qualcl.functional import batch_entropy, focal_loss
from qualcl.heads import MetaLabelGenerator
from qualcl.losses import FocalLoss
from qualcl.metrics import diagnosis_metrics
from qualcl.optim import MetaAuxiliaryOptimizer
from qualcl.optim.meta_auxiliary import TaskForward
from qualcl.recipes.mkcnet.config import TrainConfig
from qualcl.recipes.mkcnet.model import TaskNet, TaskOutput, mask_labels

__all__ = ["MkcnetTraining", "step_lr"]

Batch = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def step_lr(base: float, epoch: int, step: int, gamma: float) -> float:
    """StepLR as a function of the epoch: ``base · gamma ** (epoch // step)``.

    Set from the epoch number rather than stepped, so that resuming from any checkpoint (even one
    written mid-epoch) gives the same schedule.
    """
    return base * gamma ** (epoch // max(step, 1))


def _total(losses: dict[str, Tensor]) -> Tensor:
    return torch.stack(list(losses.values())).sum()


class MkcnetTraining(L.LightningModule):
    r"""MKCNet's training loop as a Lightning module (manual optimisation, two optimisers).

    Each epoch has two passes over the training set (:class:`~qualcl.recipes.mkcnet.data.TwoPassBatchSampler`;
    every batch carries its pass id):

    1. **Task Net** (``θ``): ``y_ω = M_φ(x, j)`` (detached), ``L_θ = FL(p_d, y_d) + FL(p_q, y_q) +
       FL(p_ω, y_ω) / L``; one SGD step of the Task Net.
    2. **Meta Learner** (``φ``): :class:`~qualcl.optim.MetaAuxiliaryOptimizer` with
       ``L_inner = L_θ`` (``y_ω`` attached) at ``θ`` and ``L_outer = FL(p_d, y_d) + FL(p_q, y_q) −
       w_ent · H(mean_i y_ω,i)`` at ``θ̃ = θ − α(∇θ L_inner + wd · θ)``, ``α`` the Task Net's current
       learning rate; one SGD step of the Meta Learner. ``θ`` is not changed by this pass. With
       ``config.meta_batch="split"`` the inner loss (and the entropy) use the first half of the batch
       and the outer loss the second half, MAXL's held-out variant; ``"same"`` is the official code.

    Variants without a Meta Learner have one pass and ``L_θ = FL(p_d, y_d) [+ FL(p_q, y_q)]``.
    Both learning rates follow StepLR. Validation computes the diagnosis AUC (one-vs-one on
    probabilities), accuracy and macro F1; ``val/auc`` selects the best checkpoint.
    :attr:`epoch_log` keeps one row per validated epoch for the run folder.

    Args:
        task: The Task Net.
        meta: The Meta Learner, or ``None``.
        config: Optimisation settings.
        slice_length: ``L`` (the auxiliary loss is divided by it, as the official code).
        mask_by: ``"joint"``, ``"quality"`` or ``"diagnosis"`` (which labels the mask sees).
        legacy_auc: Hard-label AUC on binary sets in validation.
        gather_distributed: Under DDP, the Task Net step's focal losses are means over the images of
            every rank (:class:`~qualcl.losses.FocalLoss`), so that step equals one process on the
            concatenated batch. The Meta Learner step stays per rank (its meta gradient is the
            average of the ranks' meta gradients, see :class:`~qualcl.optim.MetaAuxiliaryOptimizer`).
    """

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
        self.task = task
        self.meta = meta
        self.config = config
        self.slice_length = slice_length
        self.mask_by = mask_by
        self.legacy_auc = legacy_auc
        self.epoch_log: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._val: list[tuple[Tensor, Tensor]] = []
        self._meta_step: MetaAuxiliaryOptimizer | None = None
        self._last_target = torch.zeros(0)

    # ------------------------------------------------------------------ losses
    def _targets(self, images: Tensor, diagnosis: Tensor, quality: Tensor) -> Tensor:
        assert self.meta is not None
        d, q = mask_labels(self.mask_by, diagnosis, quality)
        target: Tensor = self.meta(images, d, q)
        return target

    def task_losses(
        self, out: TaskOutput, diagnosis: Tensor, quality: Tensor, target: Tensor | None, *, gather: bool = False
    ) -> dict[str, Tensor]:
        """``L_D``, ``L_Q`` and ``L_Ω`` (those the variant has) of Task Net outputs.

        ``gather``: means over every rank's images under DDP (``gather_distributed``; the Task Net
        step), else over this rank's (the meta step's closures).
        """
        gamma = self.config.focal_gamma

        def focal(logits: Tensor, labels: Tensor) -> Tensor:
            return self.focal(logits, labels) if gather else focal_loss(logits, labels, gamma=gamma)

        losses = {"diagnosis": focal(out.diagnosis, diagnosis)}
        if out.quality is not None:
            losses["quality"] = focal(out.quality, quality)
        if out.co_embedding is not None and target is not None:
            losses["auxiliary"] = focal(out.co_embedding, target) / self.slice_length
        return losses

    def _optimizer_list(self) -> list[Any]:
        """The Lightning-wrapped optimisers: ``[task]`` or ``[task, meta]``."""
        optimizers = self.optimizers()
        return list(optimizers) if isinstance(optimizers, list) else [optimizers]

    def _row_keys(self) -> list[str]:
        """The training statistics of an epoch row (the same for every epoch of a run)."""
        keys = ["loss", "loss_diagnosis"]
        if self.task.quality_head is not None:
            keys.append("loss_quality")
        if self.meta is not None:
            keys += ["loss_auxiliary", "meta_outer_loss", "meta_grad_norm", "aux_entropy"]
        return keys

    def _record(self, **values: float) -> None:
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1

    # ------------------------------------------------------------------ training
    def task_step_loss(self, images: Tensor, diagnosis: Tensor, quality: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_θ`` of the Task Net pass and its terms: the Meta Learner's targets (detached), then the focal losses."""
        target = None
        if self.meta is not None:
            with torch.no_grad():
                target = self._targets(images, diagnosis, quality)
        losses = self.task_losses(self.task(images), diagnosis, quality, target, gather=True)
        return _total(losses), losses

    def _task_step(self, images: Tensor, diagnosis: Tensor, quality: Tensor) -> Tensor:
        loss, losses = self.task_step_loss(images, diagnosis, quality)
        optimizer = self._optimizer_list()[0]
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self._record(loss=float(loss.detach()), **{f"loss_{k}": float(v.detach()) for k, v in losses.items()})
        return loss.detach()

    def _meta_optimizer(self) -> MetaAuxiliaryOptimizer:
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
        return self._meta_step

    def _meta_update(self, images: Tensor, diagnosis: Tensor, quality: Tensor) -> Tensor:
        inner_part = outer_part = slice(None)
        if self.config.meta_batch == "split":  # MAXL's held-out data: inner on one half, outer on the other
            half = images.shape[0] // 2
            inner_part, outer_part = slice(0, half), slice(half, None)
        x_in, d_in, q_in = images[inner_part], diagnosis[inner_part], quality[inner_part]
        x_out, d_out, q_out = images[outer_part], diagnosis[outer_part], quality[outer_part]

        # Each closure runs the Meta Learner itself: the finite-difference mode calls the inner loss
        # three times and frees each graph, so the targets cannot be shared between calls.
        def inner(forward: TaskForward) -> Tensor:
            target = self._targets(x_in, d_in, q_in)
            return _total(self.task_losses(forward(x_in), d_in, q_in, target))

        def outer(forward: TaskForward) -> Tensor:
            primary = _total(self.task_losses(forward(x_out), d_out, q_out, None))
            self._last_target = self._targets(x_in, d_in, q_in)
            return primary - self.config.entropy_weight * batch_entropy(self._last_target)

        stats = self._meta_optimizer().step(inner, outer)
        self._record(
            meta_outer_loss=float(stats["outer_loss"]),
            meta_grad_norm=float(stats["meta_grad_norm"]),
            aux_entropy=float(batch_entropy(self._last_target.detach())),
        )
        return stats["outer_loss"]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One batch of the stage its pass id names (0: Task Net, 1: Meta Learner)."""
        images, diagnosis, quality, _, passes = batch
        if int(passes[0]) == 0:
            loss = self._task_step(images, diagnosis, quality)
            self.log("train/loss", loss, prog_bar=True)
            return loss
        loss = self._meta_update(images, diagnosis, quality)
        self.log("train/meta_loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        """Set both learning rates for this epoch (StepLR)."""
        bases = [self.config.lr, self.config.meta_lr]
        for optimizer, base in zip(self._optimizer_list(), bases, strict=False):
            for group in optimizer.optimizer.param_groups:
                group["lr"] = step_lr(base, self.current_epoch, self.config.lr_step, self.config.lr_gamma)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Collect diagnosis probabilities."""
        images, diagnosis, _, _, _ = batch
        probs = torch.softmax(self.task(images).diagnosis.float(), dim=1)
        self._val.append((probs, diagnosis))

    def on_validation_epoch_end(self) -> None:
        """Log validation AUC / accuracy / F1 and record the epoch's row."""
        if not self._val:
            return
        # every rank validated its own shard: the metric is computed on all of them, never averaged per rank
        probs = gather_no_grad(torch.cat([p for p, _ in self._val])).cpu()
        target = gather_no_grad(torch.cat([t for _, t in self._val])).cpu()
        self._val.clear()
        metrics = diagnosis_metrics(probs, target, legacy_auc=self.legacy_auc)
        auc = metrics["auc"] if metrics["auc"] == metrics["auc"] else 0.0
        self.log("val/auc", auc, prog_bar=True)
        self.log("val/accuracy", metrics["accuracy"])
        row = {
            "epoch": float(self.current_epoch),
            "lr": step_lr(self.config.lr, self.current_epoch, self.config.lr_step, self.config.lr_gamma),
        }
        row.update({k: self._sums[k] / self._counts[k] if k in self._sums else math.nan for k in self._row_keys()})
        row.update(
            {"val_auc": metrics["auc"], "val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"]}
        )
        self._sums.clear()
        self._counts.clear()
        self.epoch_log.append(row)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the running statistics of an unfinished epoch in the checkpoint."""
        checkpoint["mkcnet_epoch_statistics"] = {"sums": dict(self._sums), "counts": dict(self._counts)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore them, so that a resumed epoch's history row covers all its batches."""
        statistics = checkpoint.get("mkcnet_epoch_statistics", {})
        self._sums = dict(statistics.get("sums", {}))
        self._counts = dict(statistics.get("counts", {}))

    def configure_optimizers(self) -> Any:
        """SGD for the Task Net and, with a Meta Learner, SGD for it (learning rates set per epoch)."""
        cfg = self.config
        task = torch.optim.SGD(self.task.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        if self.meta is None:
            return task
        meta = torch.optim.SGD(self.meta.parameters(), lr=cfg.meta_lr, weight_decay=cfg.meta_weight_decay)
        return [task, meta]
