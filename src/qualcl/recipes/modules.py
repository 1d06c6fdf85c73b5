"""What every recipe's Lightning modules share (:class:`RecipeModule`), and grading fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl.distributed import gather_no_grad
from qualcl.metrics import cohen_kappa, quadratic_weighted_kappa
from qualcl.models import Encoder
from qualcl.recipes.config import TrainerConfig

__all__ = ["GradingFineTuning", "History", "RecipeModule", "at_least_float32", "gathering"]

#: Checkpoint key of a module's unfinished epoch (its running sums and counts).
RUNNING_SUMS = "qualcl_running_sums"


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` for a loss: half-precision activations (mixed precision) in float32, float32 and float64 as they are.

    Examples:
        >>> import torch
        >>> at_least_float32(torch.ones(1, dtype=torch.bfloat16)).dtype, at_least_float32(torch.ones(1).double()).dtype
        (torch.float32, torch.float64)
    """
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def gathering(config: TrainerConfig) -> bool:
    """The ``gather_distributed`` every loss of a recipe is built with: on whenever the run has more than one process.

    Under DDP one step then equals one process on the concatenated batch (:mod:`qualcl.losses.base`,
    "Exact under DDP"); on one process gathering is a no-op.

    Args:
        config: The run's trainer section.

    Returns:
        Whether the run uses DDP (``trainer.distributed``).

    Examples:
        >>> from qualcl.recipes.config import TrainerConfig
        >>> gathering(TrainerConfig()), gathering(TrainerConfig(devices=2)), gathering(TrainerConfig(strategy="ddp"))
        (False, True, True)
    """
    return config.distributed


@dataclass(frozen=True)
class History:
    """What a module's history rows hold and how its stage's plot (``plots/<stage>.png``) shows them.

    Every key a module records must be declared here (a typo is refused with the known keys), so
    the CSV's columns and the plot's series are written once.

    Attributes:
        every: ``"epoch"`` (one row per validated epoch: the means of the epoch's training terms
            and the validation metrics) or ``"step"`` (one row per training step).
        curves: ``{key: label}`` drawn on the left axis (the training terms).
        metrics: ``{key: label}`` drawn on the right axis (validation metrics, ``val_<name>``).
        extra: Keys written to the CSV but not plotted (a learning rate, a learnt exponent).
        title: The plot's title (default: the stage's name).
        ylabel: Left axis label.
        metrics_label: Right axis label.

    Examples:
        >>> History(curves={"loss": "loss"}, metrics={"val_kappa": "val kappa"}).keys
        ('loss', 'val_kappa')
    """

    every: Literal["epoch", "step"] = "epoch"
    curves: Mapping[str, str] = field(default_factory=lambda: {"loss": "training loss"})
    metrics: Mapping[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()
    title: str = ""
    ylabel: str = "loss"
    metrics_label: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        """Every declared key, curves first."""
        return (*self.curves, *self.metrics, *self.extra)


class RecipeModule(L.LightningModule):
    """Base of a recipe's LightningModule: declared history rows, checkpointed running sums, gathered validation.

    A subclass sets :attr:`history` (class or instance attribute) and calls, in ``training_step``,
    ``self.record(loss=..., other_term=...)``; in ``validation_step``, ``self.collect(name=tensor)``;
    and implements :meth:`validation_metrics`. With ``history.every == "step"`` each ``record`` call
    is one row; with ``"epoch"`` the terms are summed over the epoch and the row (their means plus
    ``val_<metric>`` for each validation metric, computed on every rank's outputs) is written when
    validation ends, never in Lightning's sanity check. The sums of an unfinished epoch are saved in
    every checkpoint, so a resumed epoch's row covers all its batches.
    """

    history: History = History()
    #: Validation metric logged to the progress bar (and usually the stage's ``monitor``).
    monitor: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        #: Rows not yet written to ``history/<stage>.csv`` (the driver moves them there).
        self.history_rows: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._collected: dict[str, list[Tensor]] = {}

    def record(self, **terms: Tensor | float) -> None:
        """Report this step's values (``loss`` is also logged as ``train/loss``, on the progress bar).

        Args:
            **terms: Declared history keys and their values (tensors are detached).

        Raises:
            KeyError: A key that :attr:`history` does not declare.
        """
        values = {name: float(v.detach()) if isinstance(v, Tensor) else float(v) for name, v in terms.items()}
        unknown = sorted(set(values) - set(self.history.keys))
        if unknown:
            raise KeyError(
                f"{type(self).__name__}.record: undeclared history key(s) {unknown}; declared: "
                f"{list(self.history.keys)}"
            )
        if "loss" in values:
            self.log("train/loss", values["loss"], prog_bar=True)
        if self.history.every == "step":
            self.history_rows.append({"step": float(self.global_step), **values})
            return
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
            self._counts[name] = self._counts.get(name, 0) + 1

    def collect(self, **outputs: Tensor) -> None:
        """Keep a validation batch's outputs (``(B, ...)`` tensors) for :meth:`validation_metrics`."""
        for name, value in outputs.items():
            self._collected.setdefault(name, []).append(value.detach())

    def validation_metrics(self, outputs: dict[str, Tensor]) -> dict[str, float]:
        """The epoch's validation metrics from every rank's collected outputs.

        Args:
            outputs: ``{name: (N, ...) tensor}``: what :meth:`collect` kept, concatenated and gathered
                from every rank (on the CPU), so metrics are computed on the whole validation set.

        Returns:
            ``{metric: value}``, logged as ``val/<metric>`` and written as ``val_<metric>``.
        """
        raise NotImplementedError(f"{type(self).__name__} collects validation outputs but has no validation_metrics")

    def on_validation_epoch_end(self) -> None:
        """Gather, measure, log (non-finite values as 0.0, so checkpoint selection never sees NaN), write the row."""
        if not self._collected:
            return
        # every rank validated its own shard: metrics are computed on all of them, never averaged per rank
        outputs = {name: gather_no_grad(torch.cat(parts)).cpu() for name, parts in self._collected.items()}
        self._collected.clear()
        metrics = self.validation_metrics(outputs)
        for name, value in metrics.items():
            self.log(f"val/{name}", value if math.isfinite(value) else 0.0, prog_bar=name == self.monitor)
        if self.trainer.sanity_checking:
            return
        row = {"epoch": float(self.current_epoch), **self.epoch_means()}
        self.history_rows.append(row | {f"val_{name}": value for name, value in metrics.items()} | self.epoch_extras())

    def on_train_epoch_end(self) -> None:
        """A module that does not validate writes its epoch row here (one that does, when validation ends)."""
        if self.history.every == "epoch" and not self.validates and self._sums:
            self.history_rows.append({"epoch": float(self.current_epoch), **self.epoch_means(), **self.epoch_extras()})

    @property
    def validates(self) -> bool:
        """Whether the module defines ``validation_step``."""
        return type(self).validation_step is not L.LightningModule.validation_step

    def epoch_extras(self) -> dict[str, float]:
        """Values added to an epoch row (declared in ``history.extra``): none by default."""
        return {}

    def epoch_means(self) -> dict[str, float]:
        """The means of the terms recorded since the last row, and a fresh start for the next one."""
        means = {name: total / max(self._counts.get(name, 1), 1) for name, total in self._sums.items()}
        self._sums, self._counts = {}, {}
        return means

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the running sums of an unfinished epoch."""
        checkpoint[RUNNING_SUMS] = {"sums": dict(self._sums), "counts": dict(self._counts)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore them, so that a resumed epoch's row covers all its batches."""
        saved = checkpoint.get(RUNNING_SUMS, {})
        self._sums = {k: float(v) for k, v in saved.get("sums", {}).items()}
        self._counts = {k: int(v) for k, v in saved.get("counts", {}).items()}


class GradingFineTuning(RecipeModule):
    """Encoder + linear classifier trained with cross-entropy; validation kappa drives model selection.

    Args:
        encoder: Image encoder (pre-trained or not).
        num_classes: Number of classes.
        lr: AdamW learning rate.
        weight_decay: Weight decay.
        epochs: Epochs of the cosine learning-rate decay.
        kappa: ``"qwk"`` (quadratic weights, ordered DR grades) or ``"kappa"`` (unweighted, chest
            classes); logged as ``val/kappa``.
    """

    history = History(
        curves={"loss": "training loss"},
        metrics={"val_kappa": "val kappa", "val_accuracy": "val accuracy"},
        metrics_label="kappa / accuracy",
        title="Fine-tuning",
    )
    monitor = "kappa"

    def __init__(
        self, encoder: Encoder, num_classes: int, *, lr: float, weight_decay: float, epochs: int, kappa: str = "qwk"
    ) -> None:
        super().__init__()
        if kappa not in ("qwk", "kappa"):
            raise ValueError(f"kappa must be 'qwk' or 'kappa', got {kappa!r}")
        self.kappa, self.encoder, self.num_classes = kappa, encoder, num_classes
        self.classifier = nn.Linear(encoder.num_features, num_classes)
        self.lr, self.weight_decay, self.epochs = lr, weight_decay, epochs

    def forward(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` → ``(N, num_classes)`` logits."""
        logits: Tensor = self.classifier(self.encoder(images))
        return logits

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on a batch of images."""
        images, grades, _ = batch
        loss = F.cross_entropy(self(images), grades)
        self.record(loss=loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        """Collect predictions for the epoch's kappa."""
        images, grades, _ = batch
        self.collect(preds=self(images).argmax(dim=1), target=grades)

    def validation_metrics(self, outputs: dict[str, Tensor]) -> dict[str, float]:
        """Kappa (quadratic or unweighted; 0 where undefined) and accuracy of the whole validation set."""
        preds, target = outputs["preds"], outputs["target"]
        measure = quadratic_weighted_kappa if self.kappa == "qwk" else cohen_kappa
        kappa = measure(preds, target, self.num_classes)
        return {"kappa": kappa if kappa == kappa else 0.0, "accuracy": float((preds == target).float().mean())}

    def configure_optimizers(self) -> Any:
        """AdamW with cosine decay over the epochs."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.epochs, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
