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
from qualcl.recipes.run_folder import RunFolder

__all__ = ["CollapseMonitor", "Probe", "plot_collapse"]

#: ``probe(module) -> (embeddings, positives or None)`` of a fixed probe batch (called without gradients).
Probe = Callable[[L.LightningModule], tuple[Tensor, Tensor | None]]


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


def plot_collapse(rows: list[dict[str, float]], path: str | Path, *, title: str) -> Path:
    """Effective rank (left axis) and uniformity / alignment (right axis) over steps; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [r["step"] for r in rows]
    marker = "o" if len(rows) <= 20 else None
    fig, left = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    lines = left.plot(
        steps, [r["effective_rank"] for r in rows], color="tab:blue", marker=marker, label="effective rank"
    )
    left.set(title=title, xlabel="step", ylabel="effective rank")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.grid(alpha=0.3)
    right = left.twinx()
    lines += right.plot(steps, [r["uniformity"] for r in rows], color="tab:orange", marker=marker, label="uniformity")
    if all("alignment" in r for r in rows):
        lines += right.plot(
            steps, [r["alignment"] for r in rows], color="tab:green", marker=marker, ls="--", label="alignment"
        )
    right.set_ylabel("uniformity (0 = collapsed) / alignment")
    left.legend(lines, [str(line.get_label()) for line in lines], fontsize=8, loc="best")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
