"""The collapse monitor of the pre-training stages: effective rank, uniformity and alignment of a probe batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from qualcl.evaluation.collapse import collapse_metrics
from qualcl.recipes.modules import History
from qualcl.recipes.plots import plot_history
from qualcl.recipes.run_folder import RunFolder

__all__ = ["CollapseMonitor", "Probe", "plot_collapse"]

#: ``probe(module) -> (embeddings, positives or None)`` of a fixed probe batch (called without gradients).
Probe = Callable[[L.LightningModule], tuple[Tensor, Tensor | None]]

_COLLAPSE_HISTORY = History(
    every="step",
    curves={"effective_rank": "effective rank"},
    metrics={"uniformity": "uniformity", "alignment": "alignment"},
    ylabel="effective rank",
    metrics_label="uniformity (0 = collapsed) / alignment",
)


class CollapseMonitor(Callback):
    """Every ``every`` optimisation steps, embed a fixed probe batch and log whether the embedding collapsed.

    Writes ``history/<stage>_collapse.csv`` (``step``, ``effective_rank``, ``uniformity`` and, with two
    views, ``alignment``; :func:`qualcl.evaluation.collapse_metrics`) and, when the stage ends,
    ``plots/<stage>_collapse.png``. The probe runs in eval mode without gradients and restores the
    module's modes, so training is unchanged; its rows follow the run's steps across a resume (rows
    past the resumed step are dropped at the start).

    Args:
        run: The run folder.
        stage: Stage name.
        probe: Embeds the fixed probe batch of the stage's module.
        every: Period in optimisation steps (step 0, the initialisation, included).
    """

    def __init__(self, run: RunFolder, stage: str, probe: Probe, every: int = 10) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.run, self.stage, self.probe, self.every = run, stage, probe, every
        self.name = f"{stage}_collapse"

    def measure(self, module: L.LightningModule) -> dict[str, float]:
        """The collapse metrics of the probe batch under ``module`` now."""
        modes = {m: m.training for m in module.modules()}
        module.eval()
        try:
            with torch.no_grad():
                embeddings, positives = self.probe(module)
            return collapse_metrics(embeddings.float(), None if positives is None else positives.float())
        finally:
            for m, training in modes.items():
                m.train(training)

    def _record(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, float]:
        row = {"step": float(trainer.global_step), **self.measure(module)}
        self.run.append_history(self.name, row)
        return row

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Drop rows of an interrupted run past the resumed step, then measure the starting point."""
        self.run.truncate_history(self.name, keep_below=float(trainer.global_step))
        if trainer.global_step % self.every == 0:
            self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Measure every ``every`` steps (and log the values to the run's logger)."""
        if trainer.global_step % self.every == 0:
            row = self._record(trainer, pl_module)
            pl_module.log_dict({f"collapse/{k}": v for k, v in row.items() if k != "step"}, rank_zero_only=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Plot the stage's curves."""
        rows = self.run.read_history(self.name)
        if rows and self.run.writable:
            plot_collapse(rows, self.run.path("plots", f"{self.name}.png"), title=f"{self.stage}: collapse monitor")


def plot_collapse(rows: list[dict[str, float]], path: str | Path, *, title: str) -> Path | None:
    """Effective rank (left axis), uniformity and alignment (right axis) over steps; ``None`` without rows."""
    return plot_history(rows, _COLLAPSE_HISTORY, path, title=title)
