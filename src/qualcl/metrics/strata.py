"""Metrics by stratum (image-quality level, grade): one function, one rule for empty strata."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from qualcl._validation import check_class_ids

__all__ = ["stratify"]


def stratify(
    measure: Callable[[Tensor], dict[str, float]],
    strata: Tensor,
    names: Sequence[str],
) -> dict[str, dict[str, float]]:
    """``measure`` over all items and within each stratum, with one rule for strata without items.

    The rule, the same for every metric and every recipe: the result lists ``"overall"`` and then
    every name of ``names``, in that order, whether or not the stratum has items. Each entry carries
    ``n``, the number of items it covers; a stratum without items has the keys of the overall entry,
    its counts (``int`` values, ``n`` among them) 0 and every other metric NaN (``null`` in
    ``metrics.json``, "—" in tables; means over seeds skip it). ``measure`` is never called on an
    empty selection.

    Args:
        measure: Maps a ``(N,)`` boolean selection of the items to ``{metric: value}``.
        strata: ``(N,)`` stratum id of each item, indexing ``names``.
        names: Distinct stratum names, not ``"overall"``.

    Returns:
        ``{"overall": {...}, name: {...} for name in names}``, each with ``n``.

    Raises:
        ValueError: ``names`` repeat a name or contain ``"overall"``; ``strata`` is not ``(N,)``
            integer ids in ``[0, len(names))``.

    Examples:
        >>> import torch
        >>> correct = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
        >>> out = stratify(lambda keep: {"accuracy": float(correct[keep].mean())}, torch.tensor([0, 0, 0]),
        ...                ["Good", "Reject"])
        >>> out["Good"], out["Reject"]["n"], math.isnan(out["Reject"]["accuracy"])
        ({'accuracy': 0.6666666666666666, 'n': 3}, 0, True)
    """
    names = list(names)
    if len(set(names)) != len(names) or "overall" in names:
        raise ValueError(f"names must be distinct stratum names other than 'overall', got {names}")
    strata = check_class_ids("strata", strata, max(len(names), 1), n=strata.shape[0]).cpu()
    everything = torch.ones_like(strata, dtype=torch.bool)
    out = {"overall": {**measure(everything), "n": int(strata.numel())}}
    # the entries of an empty stratum: counts (integer values) 0, every other metric NaN
    empty = {
        key: 0 if isinstance(value, int) and not isinstance(value, bool) else math.nan
        for key, value in out["overall"].items()
    }
    for index, name in enumerate(names):
        keep = strata == index
        count = int(keep.sum())
        if count == 0:
            out[name] = dict(empty)
        else:
            out[name] = {**measure(keep), "n": count}
    return out
