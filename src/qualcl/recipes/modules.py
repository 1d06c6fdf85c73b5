"""What more than one recipe's Lightning modules share: when losses gather, supervised grading fine-tuning."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl.distributed import gather_no_grad
from qualcl.metrics import cohen_kappa, quadratic_weighted_kappa
from qualcl.models import Encoder
from qualcl.recipes.config import TrainerConfig

__all__ = ["GradingFineTuning", "at_least_float32", "gathering"]


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

    Under DDP a batch-global loss then contrasts each rank's anchors with the candidates of every
    rank and a per-sample loss takes its mean over the tokens or pixels of every rank, so one step
    equals one process on the concatenated batch (see :mod:`qualcl.losses.base`). On one process
    gathering is a no-op, so the flag changes nothing there.

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


class GradingFineTuning(L.LightningModule):
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

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        *,
        lr: float,
        weight_decay: float,
        epochs: int,
        kappa: str = "qwk",
    ) -> None:
        super().__init__()
        if kappa not in ("qwk", "kappa"):
            raise ValueError(f"kappa must be 'qwk' or 'kappa', got {kappa!r}")
        self.kappa = kappa
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.num_features, num_classes)
        self.num_classes = num_classes
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.epoch_log: list[dict[str, float]] = []
        self._val: list[tuple[Tensor, Tensor]] = []
        self._train_loss: list[float] = []

    def forward(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` → ``(N, num_classes)`` logits."""
        logits: Tensor = self.classifier(self.encoder(images))
        return logits

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on a batch of images."""
        images, grades, _ = batch
        loss = F.cross_entropy(self(images), grades)
        self._train_loss.append(float(loss.detach()))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        """Collect predictions for the epoch's kappa."""
        images, grades, _ = batch
        self._val.append((self(images).argmax(dim=1), grades))

    def on_validation_epoch_end(self) -> None:
        """Log validation kappa and accuracy; record the epoch."""
        if not self._val:
            return
        # every rank validated its own shard: the metric is computed on all of them, never averaged per rank
        preds = gather_no_grad(torch.cat([p for p, _ in self._val])).cpu()
        target = gather_no_grad(torch.cat([t for _, t in self._val])).cpu()
        self._val.clear()
        measure = quadratic_weighted_kappa if self.kappa == "qwk" else cohen_kappa
        kappa = measure(preds, target, self.num_classes)
        kappa = kappa if kappa == kappa else 0.0
        accuracy = float((preds == target).float().mean())
        self.log("val/kappa", kappa, prog_bar=True)
        self.log("val/accuracy", accuracy)
        if self.trainer.sanity_checking:
            return
        train_loss = sum(self._train_loss) / max(len(self._train_loss), 1)
        self._train_loss.clear()
        self.epoch_log.append(
            {
                "epoch": float(self.current_epoch),
                "train_loss": train_loss,
                "val_kappa": kappa,
                "val_accuracy": accuracy,
            }
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the losses of an unfinished epoch, so that a resumed epoch's history row covers all its batches."""
        checkpoint["grading_epoch_losses"] = list(self._train_loss)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore them."""
        self._train_loss = [float(v) for v in checkpoint.get("grading_epoch_losses", [])]

    def configure_optimizers(self) -> Any:
        """AdamW with cosine decay over the epochs."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.epochs, 1))
        return {"optimizer": optimizer, "lr_scheduler": schedule}
