"""The one autograd-aware all-gather used by every loss with ``gather_distributed=True``."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_no_grad", "gather_with_grad", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """Return whether a default process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Return this process's rank, or 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Return the number of processes, or 1 without a process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient and returns this rank's slice.

    The forward pads each rank's rows to the largest batch so ranks may hold different numbers of
    rows (a last, smaller batch). The backward all-reduces (sums) the full gradient, because each
    rank's loss depends on every rank's rows, and keeps the rows this rank contributed.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int]) -> Tensor:
        max_n = max(sizes)
        padded = x
        if x.shape[0] < max_n:
            padded = torch.cat([x, x.new_zeros((max_n - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """Concatenate ``x`` from every process along dim 0, keeping gradients exact.

    Rows are ordered by rank, so the result is identical on every process. Gradients flowing into
    the gathered tensor from every rank's loss are summed back to the rank that owns the rows, so a
    loss computed on local rows against gathered columns (the *local-loss* scheme of open_clip)
    gives, after DDP's gradient averaging, exactly the gradients of one process on the
    concatenated batch. Without an initialised process group (or with one process) it returns
    ``x`` unchanged.

    Args:
        x: ``(N_r, ...)`` local rows; ``N_r`` may differ between ranks.

    Returns:
        ``(gathered, offset)``: the ``(sum_r N_r, ...)`` concatenation, and the index of this
        rank's first row in it.

    Examples:
        >>> import torch
        >>> z = torch.randn(4, 8)
        >>> everything, offset = gather_with_grad(z)  # no process group: returns z, 0
        >>> everything.shape, offset
        (torch.Size([4, 8]), 0)
    """
    if not is_distributed():
        return x, 0
    sizes = _gather_sizes(x.shape[0], x.device)
    gathered: Tensor = _GatherWithGrad.apply(x, sizes)
    return gathered, sum(sizes[: dist.get_rank()])


def gather_no_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` along dim 0 without gradient (labels, levels, masks).

    Args:
        x: ``(N_r, ...)`` local rows; ``N_r`` may differ between ranks.

    Returns:
        The ``(sum_r N_r, ...)`` concatenation in rank order (``x`` itself on one process).
    """
    if not is_distributed():
        return x
    sizes = _gather_sizes(x.shape[0], x.device)
    with torch.no_grad():
        gathered: Tensor = _GatherWithGrad.apply(x.detach(), sizes)
    return gathered
