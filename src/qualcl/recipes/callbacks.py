"""Lightning plumbing shared by the recipes: history rows to CSV, resumable checkpoints, a quiet trainer."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint

from qualcl.recipes.run_folder import RunFolder

__all__ = ["EpochSetter", "HistoryWriter", "load_best", "make_trainer", "resume_path"]

# Lightning's advice that does not apply to in-memory CPU datasets and our explicit resume logic.
for _message in (".*does not have many workers.*", ".*LeafSpec.*", r".*fit\(ckpt_path=.*"):
    warnings.filterwarnings("ignore", message=_message)


class _DropAdverts(logging.Filter):
    """Lightning logs a product tip ("💡 Tip: ... litlogger") at every Trainer construction."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropAdverts())


class HistoryWriter(Callback):
    """Moves rows a module appends to ``getattr(module, attribute)`` into ``history/<stage>.csv``.

    Rows are written as they are produced (after every batch and at every epoch end), so an
    interrupted run keeps its curves; on resume, rows past the checkpoint are dropped first.
    """

    def __init__(self, run: RunFolder, stage: str, attribute: str) -> None:
        self.run = run
        self.stage = stage
        self.attribute = attribute

    def _flush(self, module: L.LightningModule) -> None:
        rows: list[dict[str, float]] = getattr(module, self.attribute)
        for row in rows:
            self.run.append_history(self.stage, row)
        rows.clear()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Write the step rows."""
        self._flush(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the epoch rows."""
        self._flush(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write what is left."""
        self._flush(pl_module)


class EpochSetter(Callback):
    """Calls ``set_epoch(trainer.current_epoch)`` on datasets and samplers at each epoch start."""

    def __init__(self, *targets: Any) -> None:
        self.targets = targets

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reseed every target for the epoch that starts."""
        for target in self.targets:
            target.set_epoch(trainer.current_epoch)


def load_best(run: RunFolder, stage: str, module: L.LightningModule) -> int | None:
    """Load the stage's ``best.ckpt`` (the monitored metric's best epoch) into ``module``; return its epoch.

    Returns ``None`` and leaves ``module`` as it is when the stage kept no best checkpoint.
    """
    best = run.checkpoint_dir(stage) / "best.ckpt"
    if not best.is_file():
        return None
    state = torch.load(best, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    return int(state["epoch"])


def resume_path(run: RunFolder, stage: str, key: str) -> Path | None:
    """The stage's ``last.ckpt`` if an earlier run was interrupted, after trimming its history.

    History rows whose ``key`` (``step`` or ``epoch``) is at or past the checkpoint's position are
    removed, since the resumed run writes them again.
    """
    path = run.last_checkpoint(stage)
    if path is None:
        run.truncate_history(stage, keep_below=float("-inf"), key=key)
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    position = state["global_step"] if key == "step" else state["epoch"]
    run.truncate_history(stage, keep_below=float(position), key=key)
    return path


def make_trainer(
    run: RunFolder,
    stage: str,
    *,
    max_steps: int = -1,
    max_epochs: int | None = None,
    progress: bool,
    callbacks: list[Callback] | None = None,
    every_n_train_steps: int | None = None,
    monitor: str | None = None,
    check_val_every_n_epoch: int = 1,
) -> L.Trainer:
    """A CPU/GPU Lightning trainer writing resumable checkpoints into ``checkpoints/<stage>``.

    ``last.ckpt`` is refreshed every ``every_n_train_steps`` steps (or every epoch) and on any
    exception, including an interruption, so a re-run continues from there.
    """
    directory = run.checkpoint_dir(stage)
    checkpoint = ModelCheckpoint(
        dirpath=directory,
        filename="best",
        save_last=True,
        monitor=monitor,
        mode="max",
        save_top_k=1 if monitor else 0,
        every_n_train_steps=every_n_train_steps,
    )
    return L.Trainer(
        default_root_dir=str(run.root),
        max_steps=max_steps,
        max_epochs=max_epochs,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=check_val_every_n_epoch,
        callbacks=[checkpoint, OnExceptionCheckpoint(directory, filename="last"), *(callbacks or [])],
        deterministic=False,
    )
