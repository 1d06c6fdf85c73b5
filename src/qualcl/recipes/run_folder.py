"""A recipe's run folder: config, metrics, plots, safetensors weights, stage markers, model card."""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from qualcl import __version__
from qualcl.recipes.config import save_config

__all__ = ["RunFolder", "flatten_metrics"]


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"test": {"qwk": 0.8}}`` → ``{"test/qwk": 0.8}`` (numbers only)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


class RunFolder:
    """Everything one recipe run writes, in one folder.

    Layout::

        config.yaml            resolved config (round-trips into the recipe's config dataclass)
        metrics.json / .csv    final metrics (nested JSON; flat ``name,value`` CSV)
        history/<stage>.csv    per-step or per-epoch curves
        plots/*.png            curves, confusion matrices, embedding maps
        checkpoints/<stage>/   Lightning ``last.ckpt`` for resuming an interrupted stage
        weights/<name>.safetensors   finished weights (never pickled)
        stages.json            which stages finished, with their timing
        MODEL_CARD.md          what was trained, on what, with which results

    Args:
        root: The folder (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("plots", "history", "checkpoints", "weights"):
            (self.root / sub).mkdir(exist_ok=True)

    def path(self, *parts: str) -> Path:
        """A path inside the run folder."""
        return self.root.joinpath(*parts)

    def save_config(self, config: Any) -> Path:
        """Write ``config.yaml``."""
        return save_config(config, self.root / "config.yaml")

    # ------------------------------------------------------------------ stages
    def _stages(self) -> dict[str, Any]:
        path = self.root / "stages.json"
        data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        return data

    def stage_done(self, name: str) -> bool:
        """Whether stage ``name`` finished in an earlier (possibly interrupted) run."""
        return name in self._stages()

    def stage_info(self, name: str) -> dict[str, Any]:
        """What :meth:`mark_done` recorded for ``name``."""
        info: dict[str, Any] = self._stages()[name]
        return info

    def mark_done(self, name: str, **info: Any) -> None:
        """Record that stage ``name`` finished (atomically, so an interruption leaves no half file)."""
        stages = self._stages()
        stages[name] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        tmp = self.root / "stages.json.tmp"
        tmp.write_text(json.dumps(stages, indent=2))
        tmp.replace(self.root / "stages.json")

    def checkpoint_dir(self, stage: str) -> Path:
        """Folder of a stage's resumable Lightning checkpoints."""
        path = self.root / "checkpoints" / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def last_checkpoint(self, stage: str) -> Path | None:
        """``last.ckpt`` of a stage, if an earlier run was interrupted during it."""
        path = self.root / "checkpoints" / stage / "last.ckpt"
        return path if path.is_file() else None

    # ------------------------------------------------------------------ weights
    def save_weights(self, module: nn.Module, name: str) -> Path:
        """Write ``module``'s state dict as safetensors."""
        path = self.root / "weights" / f"{name}.safetensors"
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(path), metadata={"qualcl": __version__})
        return path

    def load_weights(self, module: nn.Module, name: str, *, strict: bool = True) -> nn.Module:
        """Load safetensors weights written by :meth:`save_weights` into ``module``."""
        path = self.root / "weights" / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no weights {path}: run the stage that writes them first")
        module.load_state_dict(load_file(str(path)), strict=strict)
        return module

    # ------------------------------------------------------------------ metrics
    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` (nested) and ``metrics.csv`` (flat ``name,value``)."""
        clean = json.loads(json.dumps(metrics, default=float, allow_nan=True))
        (self.root / "metrics.json").write_text(json.dumps(clean, indent=2, sort_keys=True))
        with (self.root / "metrics.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "value"])
            for key, value in sorted(flatten_metrics(clean).items()):
                writer.writerow([key, "nan" if math.isnan(value) else f"{value:.6g}"])
        return self.root / "metrics.json"

    def append_history(self, stage: str, row: dict[str, float]) -> None:
        """Append one row to ``history/<stage>.csv`` (header from the first row)."""
        path = self.root / "history" / f"{stage}.csv"
        new = not path.is_file()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def read_history(self, stage: str) -> list[dict[str, float]]:
        """Rows of ``history/<stage>.csv`` (empty if none)."""
        path = self.root / "history" / f"{stage}.csv"
        if not path.is_file():
            return []
        with path.open(newline="") as handle:
            return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]

    def truncate_history(self, stage: str, keep_below: float, key: str = "step") -> None:
        """Drop history rows at or past ``keep_below`` (rows written after the checkpoint we resume from)."""
        rows = [r for r in self.read_history(stage) if r.get(key, -1) < keep_below]
        path = self.root / "history" / f"{stage}.csv"
        if path.is_file():
            path.unlink()
        for row in rows:
            self.append_history(stage, row)

    # ------------------------------------------------------------------ card
    def write_model_card(self, title: str, paper: str, body: str, metrics: dict[str, Any]) -> Path:
        """Write ``MODEL_CARD.md``: what, from which paper, on which machine, with which results."""
        flat = flatten_metrics(metrics)
        rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(flat.items()))
        text = (
            f"# {title}\n\n"
            f"Paper: {paper}\n\n{body.strip()}\n\n"
            f"## Results\n\n| metric | value |\n|---|---|\n{rows}\n\n"
            f"## Environment\n\nqualcl {__version__}, torch {torch.__version__}, "
            f"Python {platform.python_version()}, {platform.machine()} "
            f"({torch.get_num_threads()} threads), written {time.strftime('%Y-%m-%d %H:%M')}.\n\n"
            "Weights are in `weights/` as safetensors; `config.yaml` reproduces the run.\n"
        )
        path = self.root / "MODEL_CARD.md"
        path.write_text(text)
        return path
