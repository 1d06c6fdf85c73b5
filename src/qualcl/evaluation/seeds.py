"""Comparing methods over training seeds: mean ± std, and a paired difference with its interval and verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["mean_std", "paired_difference"]


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


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean of ``a[i] - b[i]`` over the pairs where both are finite, with its paired-t interval and a verdict.

    Args:
        a: One value per seed of the variant claimed better.
        b: The reference's values for the same seeds, in the same order.
        confidence: Coverage of the interval.

    Returns:
        ``{"mean", "low", "high", "pairs", "verdict"}``; the verdict is ``"holds"`` (the interval
        lies above 0), ``"reversed"`` (below 0), ``"not distinguishable"`` (it holds 0) or ``"too few
        pairs"`` (under 2).

    Examples:
        >>> r = paired_difference([0.60, 0.62, 0.65], [0.50, 0.55, 0.52])
        >>> round(r["mean"], 3), round(r["low"], 3), round(r["high"], 3), r["verdict"]
        (0.1, 0.025, 0.175, 'holds')
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"a and b must hold one value per seed each, got {len(a)} and {len(b)} values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    diffs = [x - y for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    n = len(diffs)
    if n < 2:
        mean = diffs[0] if diffs else math.nan
        return {"mean": mean, "low": math.nan, "high": math.nan, "pairs": n, "verdict": "too few pairs"}
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = "holds" if low > 0 else "reversed" if high < 0 else "not distinguishable"
    return {"mean": mean, "low": low, "high": high, "pairs": n, "verdict": verdict}
