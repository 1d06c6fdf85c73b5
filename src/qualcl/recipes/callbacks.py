"""Lightning callbacks and checkpoint helpers shared by the recipes: history rows to CSV, resume, best epoch."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from qualcl.recipes.run_folder import RunFolder

__all__ = [
    "HISTORY_ROWS",
    "EpochSetter",
    "HistoryWriter",
    "RandomStates",
    "ResumedEpochStart",
    "load_best",
    "resume_path",
]

#: Checkpoint key: the number of history rows written when the checkpoint was saved.
HISTORY_ROWS = "qualcl_history_rows"
#: Checkpoint key: the global random generators' states (:class:`RandomStates`).
RANDOM_STATES = "qualcl_random_states"


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
        """Write pending rows, then record how many rows the history holds at this checkpoint.

        Only the rank that writes the run folder counts them (global rank 0 under DDP, whose checkpoint is
        the one saved): another rank reading the file while rank 0 appends to it could meet a half-written row.
        """
        self._flush(pl_module)
        if self.run.writable:
            checkpoint[HISTORY_ROWS] = len(self.run.read_history(self.stage))


class EpochSetter(Callback):
    """Calls ``set_epoch(trainer.current_epoch)`` on datasets and samplers at each epoch start."""

    def __init__(self, *targets: Any) -> None:
        self.targets = targets

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reseed every target for the epoch that starts."""
        for target in self.targets:
            target.set_epoch(trainer.current_epoch)


class ResumedEpochStart(Callback):
    """Calls the module's ``on_train_epoch_start`` when a stage resumes in the middle of an epoch.

    Lightning does not call epoch-start hooks for an epoch it resumes mid-way, so the epoch's setup
    that a module does there (train/eval modes of its parts, a frozen encoder's BatchNorm kept in eval
    mode, the epoch's learning rates) would be missing from the resumed batches.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Redo the module's setup of the epoch being resumed."""
        if trainer.fit_loop.restarted_mid_epoch:
            pl_module.on_train_epoch_start()


class RandomStates(Callback):
    """Saves the global random generators in every checkpoint and restores them on resume.

    Draws a library makes from the global generators (torchvision's detector samples its anchors
    with ``torch.randperm``, say) then continue after a resume where they stopped, as in the
    uninterrupted run; qualcl's own draws come from generators seeded by ``(seed, epoch, index)``
    or the step and need none of this. Saved: torch's CPU generator, the CUDA generators, NumPy's
    and Python's. Under DDP only global rank 0's states are saved and every rank gets them back,
    which is exact when every rank draws as much as rank 0 (every rank starts from the same seed).
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Record the generators' states."""
        kind, keys, *rest = np.random.get_state(legacy=True)  # noqa: NPY002 (the generator others draw from)
        checkpoint[RANDOM_STATES] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(np.array(keys, dtype=np.uint32)), *rest],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Put the generators back where the checkpoint left them."""
        states = checkpoint.get(RANDOM_STATES)
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        kind, keys, *rest = states["numpy"]
        np.random.set_state((kind, keys.numpy(), *rest))  # noqa: NPY002
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))


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


def resume_path(run: RunFolder, stage: str) -> Path | None:
    """The stage's ``last.ckpt`` if an earlier run was interrupted, after trimming its history.

    The history keeps the rows the checkpoint recorded (:class:`HistoryWriter`); rows written after
    it are removed, since the resumed run writes them again. Without a checkpoint the stage starts
    over, with an empty history.
    """
    path = run.last_checkpoint(stage)
    if path is None:
        run.truncate_history(stage, keep_rows=0)
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    run.truncate_history(stage, keep_rows=int(state[HISTORY_ROWS]))
    return path
