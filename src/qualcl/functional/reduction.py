"""Weighted torch-style reduction shared by every loss."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["weighted_reduce"]


def weighted_reduce(losses: Tensor, weights: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Reduce per-anchor losses with optional per-anchor weights.

    ``"mean"`` is the weighted mean ``sum_i w_i l_i / sum_i w_i`` (plain mean without weights); when
    every weight is zero it returns a zero that stays attached to the graph, never NaN. ``"sum"`` is
    ``sum_i w_i l_i``; ``"none"`` returns ``w_i l_i`` per anchor.

    Args:
        losses: ``(N,)`` per-anchor losses.
        weights: ``(N,)`` non-negative weights, or ``None`` for all ones.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or ``(N,)`` for ``"none"``.

    Examples:
        >>> import torch
        >>> weighted_reduce(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.0]))
        tensor(1.)
    """
    weighted = losses if weights is None else losses * weights.to(losses.dtype)
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    if weights is None:
        return weighted.sum() / max(losses.numel(), 1)
    # the weighted mean of weights scaled by a power of two (exact: every rounding stays as it was),
    # so that tiny (subnormal) weights keep a finite gradient w_i / sum(w) instead of w_i * inf
    scaled = weights.to(losses.dtype)
    if scaled.numel():
        scaled = torch.ldexp(scaled, -torch.frexp(scaled.max()).exponent)
    total = scaled.sum()
    return (losses * scaled).sum() / total.where(total > 0, total.new_ones(()))
