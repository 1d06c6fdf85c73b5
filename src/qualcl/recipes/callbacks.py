"""Lightning callbacks and checkpoint helpers shared by the recipes: history rows to CSV, resume, best epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from qualcl.recipes.run_folder import RunFolder

__all__ = ["HISTORY_ROWS", "EpochSetter", "HistoryWriter", "load_best", "resume_path"]

#: Checkpoint key: the number of history rows written when the checkpoint was saved.
HISTORY_ROWS = "qualcl_history_rows"


class HistoryWriter(Callback):
    """Moves rows a module appends to ``getattr(module, attribute)`` into ``history/<stage>.csv``.

    Rows are written as they are produced (after every batch and at every epoch end), so an
    interrupted run keeps its curves. Every checkpoint records how many rows the file held when it
    was saved (pending rows are written first), and a run resumed from it drops the rows past that
    count (:func:`resume_path`): the resumed run writes exactly the rows that follow.
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

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Write pending rows, then record how many rows the history holds at this checkpoint."""
        self._flush(pl_module)
        checkpoint[HISTORY_ROWS] = len(self.run.read_history(self.stage))


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

    The history keeps the rows the checkpoint recorded (:class:`HistoryWriter`); rows written after
    it are removed, since the resumed run writes them again. Checkpoints without that record (qualcl
    0.1) keep the rows whose ``key`` (``step`` or ``epoch``) is before the checkpoint's position.
    Without a checkpoint the stage starts over, with an empty history.
    """
    path = run.last_checkpoint(stage)
    if path is None:
        run.truncate_history(stage, keep_below=float("-inf"), key=key)
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if HISTORY_ROWS in state:
        run.truncate_history(stage, keep_rows=int(state[HISTORY_ROWS]))
        return path
    position = state["global_step"] if key == "step" else state["epoch"]
    run.truncate_history(stage, keep_below=float(position), key=key)
    return path
