"""Reduction of local per-anchor losses so that DDP's gradient averaging is exact."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

from qualcl.distributed import world_size


def reduce_across_ranks(losses: Tensor, weights: Tensor | None, reduction: str) -> Tensor:
    """Reduce local ``w_i l_i`` so that averaging gradients over ranks gives the global reduction.

    With ``W`` ranks, ``"mean"`` returns ``W * sum_local(w l) / sum_global(w)`` and ``"sum"``
    returns ``W * sum_local(w l)``: DDP divides gradients by ``W``, so the gradients equal those of
    one process on the concatenated batch, and the mean of the returned values over ranks equals
    that process's loss, also when ranks hold different numbers of rows. ``"none"`` returns the
    local per-anchor losses unchanged. Weights enter the denominator detached.

    Args:
        losses: ``(N_r,)`` local per-anchor losses, already multiplied by ``weights``.
        weights: ``(N_r,)`` local weights, or ``None`` for all ones.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        Scalar, or ``(N_r,)`` for ``"none"``.
    """
    if reduction == "none":
        return losses
    w = world_size()
    if reduction == "sum":
        return losses.sum() * w
    if weights is None:
        denominator = losses.new_tensor(float(losses.shape[0]))
    else:
        denominator = weights.detach().to(losses.dtype).sum()
    if w > 1:
        denominator = denominator.clone()
        dist.all_reduce(denominator, op=dist.ReduceOp.SUM)
    return losses.sum() * w / denominator.where(denominator > 0, denominator.new_ones(()))
