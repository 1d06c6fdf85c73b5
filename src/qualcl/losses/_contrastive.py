"""The one contrastive path of the losses: gather the candidates → describe their columns → reduce exactly.

``InfoNCE``, ``ClipLoss``, ``NTXentLoss`` and ``MultiLevelInfoNCE`` all follow open_clip's
*local-loss* scheme under ``torch.distributed``: each rank's rows are contrasted with the candidates
of every rank (:func:`gather_pool`, gradients summed back to their owners), the rows' own columns
are found from the rank's offset (:meth:`Pool.own_columns`), and the local loss is scaled so that
DDP's gradient averaging gives exactly the gradients of one process on the concatenated batch
(:func:`reduce_across_ranks`). :func:`contrast` does all three for the fused InfoNCE.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from qualcl.distributed import gather_no_grad, gather_with_grad, world_size
from qualcl.kernels._dispatch import prefers_dense
from qualcl.kernels.fused_info_nce import fused_info_nce, fused_info_nce_rows

__all__ = ["Pool", "contrast", "gather_pool", "reduce_across_ranks"]


class Pool(NamedTuple):
    """Candidates as every rank sees them.

    Attributes:
        features: ``(M, D)`` candidate rows of every rank, in rank order (the local rows alone when
            not distributed).
        labels: ``(M,)`` their labels, or ``None``.
        offset: Column of this rank's first local row in ``features``.
    """

    features: Tensor
    labels: Tensor | None
    offset: int

    def own_columns(self, n: int) -> Tensor:
        """``(n,)`` columns of the local rows ``0..n-1`` in the pool."""
        return torch.arange(n, device=self.features.device) + self.offset


def gather_pool(features: Tensor, labels: Tensor | None = None, *, distributed: bool) -> Pool:
    """Gather ``features`` (with gradients) and ``labels`` (without) from every rank when ``distributed``."""
    if not distributed:
        return Pool(features, labels, 0)
    gathered, offset = gather_with_grad(features)
    return Pool(gathered, None if labels is None else gather_no_grad(labels), offset)


def reduce_across_ranks(losses: Tensor, weights: Tensor | None, reduction: str) -> Tensor:
    """Reduce local ``w_i l_i`` so that averaging gradients over ranks gives the global reduction.

    With ``W`` ranks, ``"mean"`` returns ``W * sum_local(w l) / sum_global(w)`` and ``"sum"``
    returns ``W * sum_local(w l)``: DDP divides gradients by ``W``, so the gradients equal those of
    one process on the concatenated batch, and the mean of the returned values over ranks equals
    that process's loss, also when ranks hold different numbers of rows. ``"none"`` returns the
    local per-anchor losses unchanged. Weights enter the denominator detached.

    Args:
        losses: Local per-anchor losses, already multiplied by ``weights`` (any shape: only their
            sum is used for a scalar reduction).
        weights: ``(N_r,)`` local weights of the mean's denominator, or ``None`` for one per entry
            of ``losses``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        Scalar, or ``losses`` for ``"none"``.
    """
    if reduction == "none":
        return losses
    w = world_size()
    if reduction == "sum":
        return losses.sum() * w
    if weights is None:
        denominator = losses.new_tensor(float(losses.numel()))
    else:
        denominator = weights.detach().to(losses.dtype).sum()
    if w > 1:
        denominator = denominator.clone()
        dist.all_reduce(denominator, op=dist.ReduceOp.SUM)
    return losses.sum() * w / denominator.where(denominator > 0, denominator.new_ones(()))


def contrast(
    query: Tensor,
    candidates: Tensor,
    *,
    distributed: bool,
    reduction: str,
    impl: str,
    **columns: Any,
) -> Tensor:
    """:func:`~qualcl.kernels.fused_info_nce` of local ``query`` rows against (gathered) ``candidates``.

    Dense (``impl="naive"``) up to :data:`~qualcl.kernels.DENSE_LIMIT` logits with ``impl="auto"``,
    streaming beyond. Under DDP (``distributed=True``) the local weighted sum is divided by the
    all-reduced weight of the contrasted rows of every rank (rows without a positive or a negative
    leave the mean on every rank alike); ``columns`` are the keyword arguments of the kernel
    (``positive``, ``positive_index``, ``labels``, ``candidate_labels``, ``exclude_index``,
    ``negative_mask``, ``temperature``, ``top_k``, ``weights``, ``normalize``).
    """
    backend = "naive" if prefers_dense(impl, query.shape[0], candidates.shape[0]) else impl
    if not distributed or reduction == "none":
        return fused_info_nce(query, candidates, reduction=reduction, impl=backend, **columns)
    total, contrasted = fused_info_nce_rows(query, candidates, reduction="sum", impl=backend, **columns)
    return reduce_across_ranks(total.reshape(1), contrasted if reduction == "mean" else None, reduction)
