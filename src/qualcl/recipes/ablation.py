"""What the recipes' ablations share: a resumable loop over variants and seeds, and mean ± std cells."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["mean_std", "run_variants"]


def mean_std(values: Sequence[float]) -> str:
    """``"0.123 ± 0.004"`` (sample std) of the finite ``values``; ``"n/a"`` when there are none.

    Example:
        >>> mean_std([0.5, 0.7, float("nan")])
        '0.600 ± 0.141'
    """
    clean = [float(v) for v in values if math.isfinite(v)]
    if not clean:
        return "n/a"
    mean = sum(clean) / len(clean)
    std = math.sqrt(sum((v - mean) ** 2 for v in clean) / (len(clean) - 1)) if len(clean) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def run_variants(
    root: Path,
    names: Sequence[str],
    seeds: Sequence[int],
    run: Callable[[str, int, Path], dict[str, Any]],
    summarise: Callable[[dict[str, Any]], str],
    *,
    progress: bool = True,
) -> dict[str, dict[int, dict[str, Any]]]:
    """Run ``run(name, seed, folder)`` for every variant and seed unless ``folder/metrics.json`` exists.

    Each run lives in ``root/<name>/seed<k>``; a finished one is read back instead of re-run, so
    an interrupted ablation continues where it stopped.

    Args:
        root: Folder of the ablation.
        names: Variant names.
        seeds: Training seeds.
        run: Runs one variant with one seed into a folder and returns its metrics.
        summarise: One line about a run's metrics, printed when ``progress``.
        progress: Print a line per finished run.

    Returns:
        ``{name: {seed: metrics}}``.
    """
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name in names:
        for seed in seeds:
            folder = root / name / f"seed{seed}"
            done = folder / "metrics.json"
            metrics = json.loads(done.read_text()) if done.is_file() else run(name, seed, folder)
            results.setdefault(name, {})[seed] = metrics
            if progress:
                print(f"[ablation] {name} seed {seed}: {summarise(metrics)}", flush=True)
    return results
