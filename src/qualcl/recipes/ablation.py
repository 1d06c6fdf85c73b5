"""What the recipes' ablations share: a resumable loop over variants and seeds, and mean ± std cells."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from qualcl.recipes.run_folder import read_metrics

__all__ = ["ablation_plan", "mean_std", "quality_rank", "run_variants"]


def quality_rank(level: str) -> tuple[int, str]:
    """Sort key of quality levels: Good, Usable, Reject first (best to worst), any other level after them by name.

    Examples:
        >>> sorted(["Reject", "Low", "Good", "Usable"], key=quality_rank)
        ['Good', 'Usable', 'Reject', 'Low']
    """
    from qualcl.data.loading import FUNDUS_QUALITY

    return (FUNDUS_QUALITY.index(level), "") if level in FUNDUS_QUALITY else (len(FUNDUS_QUALITY), level)


def mean_std(values: Sequence[float], expected: int | None = None) -> str:
    """``"0.123 ± 0.004"`` (sample std) of the finite ``values``; ``"n/a"`` when there are none.

    When fewer than ``expected`` values are finite, the count is added: ``"0.600 ± 0.141 (n=2)"``.

    Examples:
        >>> mean_std([0.5, 0.7, float("nan")])
        '0.600 ± 0.141'
        >>> mean_std([0.5, 0.7], expected=3)
        '0.600 ± 0.141 (n=2)'
    """
    clean = [float(v) for v in values if math.isfinite(v)]
    if not clean:
        return "n/a"
    mean = sum(clean) / len(clean)
    std = math.sqrt(sum((v - mean) ** 2 for v in clean) / (len(clean) - 1)) if len(clean) > 1 else 0.0
    count = f" (n={len(clean)})" if expected is not None and len(clean) < expected else ""
    return f"{mean:.3f} ± {std:.3f}{count}"


def ablation_plan(
    out: str | Path, names: Iterable[str], check: Callable[[str], Any], data: Any
) -> tuple[Path, list[str], str | None]:
    """An ablation's folder, its variant names and the data folder all its runs share.

    Each name is checked first (``check(name)`` raises on an unknown variant or an impossible
    combination), so nothing trains before every variant is known to be valid. The runs share one
    synthetic dataset, ``out/data``, unless ``data.data_dir`` names a folder.

    Args:
        out: Folder of the ablation.
        names: Variant names.
        check: Raises ``ValueError`` for a variant that cannot run.
        data: The recipe's data config (``dataset``, ``data_dir``).

    Examples:
        >>> from types import SimpleNamespace
        >>> data = SimpleNamespace(dataset="synthetic", data_dir=None)
        >>> plan = ablation_plan("abl", ["a", "b"], lambda name: None, data)
        >>> plan[1], Path(plan[2]).as_posix()
        (['a', 'b'], 'abl/data')
    """
    root = Path(out)
    chosen = list(names)
    for name in chosen:
        check(name)
    data_dir = data.data_dir
    if data.dataset == "synthetic" and data_dir is None:
        data_dir = str(root / "data")
    return root, chosen, data_dir


def run_variants(
    root: Path,
    names: Sequence[str],
    seeds: Sequence[int],
    run: Callable[[str, int, Path], dict[str, Any]],
    summarise: Callable[[dict[str, Any]], str],
    *,
    progress: bool = True,
    run_missing: bool = True,
) -> dict[str, dict[int, dict[str, Any]]]:
    """Run ``run(name, seed, folder)`` for every variant and seed unless ``folder/metrics.json`` exists.

    Each run lives in ``root/<name>/seed<k>``; a finished one is read back instead of re-run, so
    an interrupted ablation continues where it stopped. With ``run_missing=False`` nothing is
    trained: only the finished runs are collected (variants without any are left out).

    Args:
        root: Folder of the ablation.
        names: Variant names.
        seeds: Training seeds.
        run: Runs one variant with one seed into a folder and returns its metrics.
        summarise: One line about a run's metrics, printed when ``progress``.
        progress: Print a line per finished run.
        run_missing: Train the runs that are not finished yet.

    Returns:
        ``{name: {seed: metrics}}`` of the finished runs.
    """
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name in names:
        for seed in seeds:
            folder = root / name / f"seed{seed}"
            done = folder / "metrics.json"
            if not done.is_file() and not run_missing:
                continue
            metrics = read_metrics(done) if done.is_file() else run(name, seed, folder)
            results.setdefault(name, {})[seed] = metrics
            if progress:
                print(f"[ablation] {name} seed {seed}: {summarise(metrics)}", flush=True)
    return results
