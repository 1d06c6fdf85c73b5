"""Synchronised BatchNorm that runs on any device and backend (CPU/gloo too), twice differentiable.

torch's :class:`torch.nn.SyncBatchNorm` runs only on CUDA tensors; :class:`SyncBatchNorm` computes
the batch statistics of every process with one autograd-aware all-reduce, so that a DDP step on
CPUs (gloo) — or a step that differentiates twice through BatchNorm (a second-order meta step) —
equals one process on the concatenated batch. :func:`convert_sync_batchnorm` swaps every
BatchNorm of a model for torch's (on CUDA) or this one, and :func:`revert_sync_batchnorm` undoes it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from qualcl.distributed.gather import is_distributed

__all__ = ["SyncBatchNorm", "all_reduce_sum", "convert_sync_batchnorm", "revert_sync_batchnorm"]

#: Attribute of a converted layer that remembers the BatchNorm class it replaced.
_ORIGINAL = "_qualcl_batchnorm_class"
Backend = Literal["auto", "torch", "qualcl"]


class _AllReduceSum(torch.autograd.Function):
    """``y = sum_r x_r`` on every rank; its adjoint is itself, so it differentiates any number of times."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = x.detach().clone().contiguous()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # every rank's y depends on this rank's x: the gradient is the sum of every rank's upstream gradient
        result: Tensor = _AllReduceSum.apply(grad)
        return result


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum ``x`` over every process, with gradients (``x`` itself without a process group).

    The backward sums every process's gradient of the result, so a loss on one rank that depends
    on another rank's ``x`` sends it its gradient; the backward is itself this all-reduce, hence
    differentiable again (double backward, e.g. a second-order meta step through BatchNorm).
    Every process must call it, in the same order, with the same shape.

    Args:
        x: Any tensor, the same shape on every process.

    Returns:
        The element-wise sum over processes, the same on every process.

    Examples:
        >>> import torch
        >>> all_reduce_sum(torch.ones(3))  # one process: x itself
        tensor([1., 1., 1.])
    """
    if not is_distributed():
        return x
    result: Tensor = _AllReduceSum.apply(x)
    return result


def _global_moments(x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Mean and biased variance ``(C,)`` of channel 1 of ``x`` over every process's rows, and the count.

    Each rank's count, mean and sum of squared deviations are placed in its row of a ``(W, 2C + 1)``
    table, which one :func:`all_reduce_sum` completes; the moments are then combined as Chan et al.
    (no cancellation from ``E[x²] − E[x]²``).
    """
    dims = [d for d in range(x.dim()) if d != 1]
    channels = x.shape[1]
    n_local = x.numel() // max(channels, 1)
    mean_local = x.mean(dims) if n_local else x.new_zeros(channels)
    shape = [1, channels] + [1] * (x.dim() - 2)
    m2_local = ((x - mean_local.reshape(shape)) ** 2).sum(dims)
    world, me = dist.get_world_size(), dist.get_rank()
    row = torch.cat([mean_local.new_full((1,), float(n_local)), mean_local, m2_local])
    table = all_reduce_sum(torch.stack([row if r == me else torch.zeros_like(row) for r in range(world)]))
    counts, means, m2s = table[:, :1], table[:, 1 : 1 + channels], table[:, 1 + channels :]
    total = round(float(counts.detach().sum()))
    if total <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    mean = (counts * means).sum(0) / total
    var = (m2s + counts * (means - mean) ** 2).sum(0) / total
    return mean, var, total


class SyncBatchNorm(_BatchNorm):
    r"""BatchNorm whose training statistics are those of the batch of every process (any device, any backend).

    In training mode under ``torch.distributed`` (more than one process) the per-channel mean and
    biased variance are taken over the rows of every rank (one all-reduce of each rank's count,
    mean and squared deviations, with gradients, :func:`all_reduce_sum`), the input is normalised
    with them, and the running statistics are updated as :class:`torch.nn.BatchNorm2d` does on the
    concatenated batch (momentum, or the cumulative average for ``momentum=None``; the running
    variance with the global unbiased variance). Outputs, input and parameter gradients and running
    statistics therefore equal one process's BatchNorm on the concatenated batch (up to rounding),
    once DDP has averaged the gradients. Unlike :class:`torch.nn.SyncBatchNorm` it runs on CPU
    tensors with gloo, accepts ranks with different batch sizes (a rank may hold none) and is
    twice differentiable. Without a process group, in eval mode, or with one process it is
    exactly :func:`torch.nn.functional.batch_norm`. Half-precision inputs are normalised with
    float32 statistics. Every rank must run the same training-mode forwards, in the same order.

    Args:
        num_features: ``C``, the channels (dimension 1 of the input).
        eps: Added to the variance.
        momentum: Running-statistics momentum, or ``None`` for a cumulative average.
        affine: Learnable per-channel scale and shift.
        track_running_stats: Keep running mean and variance (used in eval mode).

    Shape:
        Input and output ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``.

    Examples:
        >>> import torch
        >>> bn = SyncBatchNorm(3)
        >>> bn(torch.randn(4, 3, 2, 2)).shape  # no process group: plain BatchNorm
        torch.Size([4, 3, 2, 2])

    Reference:
        Ioffe and Szegedy, "Batch Normalization", ICML 2015; Peng et al., "MegDet" (cross-GPU
        BatchNorm), CVPR 2018; Chan, Golub and LeVeque, "Updating formulae and a pairwise
        algorithm for computing sample variances", 1979.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm: input must have at least 2 dimensions (N, C, ...), got {input.dim()}D")
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"SyncBatchNorm: input must have {self.num_features} channels (dimension 1), got {input.shape[1]}"
            )

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input`` ``(N, C, ...)`` with the statistics of every process's batch (training mode)."""
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not batch_stats or not is_distributed():
            return nn.functional.batch_norm(
                input,
                self.running_mean if not self.training or self.track_running_stats else None,
                self.running_var if not self.training or self.track_running_stats else None,
                self.weight,
                self.bias,
                batch_stats,
                factor,
                self.eps,
            )
        low = input.dtype in (torch.float16, torch.bfloat16)
        x = input.float() if low else input
        mean, var, total = _global_moments(x)
        if self.training and self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None
            with torch.no_grad():
                unbiased = var.detach() * (total / (total - 1))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        shape = [1, -1] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.to(scale.dtype)
        out = (x - mean.reshape(shape)) * scale.reshape(shape)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype).reshape(shape)
        return out.to(input.dtype) if low else out


def _convert(layer: _BatchNorm, backend: Backend, process_group: Any) -> nn.Module:
    use_torch = backend == "torch" or (
        backend == "auto" and any(t.is_cuda for t in [*layer.parameters(recurse=False), *layer.buffers(recurse=False)])
    )
    new: _BatchNorm
    if use_torch:
        new = nn.SyncBatchNorm(
            layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats, process_group
        )
    else:
        if process_group is not None:
            raise ValueError("process_group: qualcl's SyncBatchNorm synchronises the default group only, got a group")
        new = SyncBatchNorm(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
    _move_state(layer, new)
    setattr(new, _ORIGINAL, type(layer))
    return new


def _move_state(old: _BatchNorm, new: _BatchNorm) -> None:
    """Hand ``old``'s parameters (the same objects: an optimiser keeps them), buffers and mode to ``new``."""
    if old.affine:
        new.weight, new.bias = old.weight, old.bias
    new.running_mean, new.running_var = old.running_mean, old.running_var
    new.num_batches_tracked = old.num_batches_tracked
    new.train(old.training)
    if hasattr(old, "qconfig"):
        new.qconfig = old.qconfig


def convert_sync_batchnorm(module: nn.Module, *, backend: Backend = "auto", process_group: Any = None) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by a synchronised one (in place; returns the new root).

    Parameters (the same objects, so an optimiser built before keeps working), buffers and
    train/eval mode carry over; the replaced class is remembered for :func:`revert_sync_batchnorm`.
    Layers already synchronised are left as they are.

    Args:
        module: A model, or a BatchNorm layer itself.
        backend: ``"torch"`` (:class:`torch.nn.SyncBatchNorm`, CUDA only), ``"qualcl"``
            (:class:`SyncBatchNorm`, any device; twice differentiable) or ``"auto"``: torch's for a
            layer whose tensors are on CUDA, qualcl's otherwise.
        process_group: torch's process group to synchronise within (``backend="torch"`` only).

    Returns:
        ``module``, or its replacement when ``module`` is itself a BatchNorm layer.

    Examples:
        >>> from torch import nn
        >>> net = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
        >>> type(net[1]).__name__
        'SyncBatchNorm'
    """
    if backend not in ("auto", "torch", "qualcl"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'qualcl', got {backend!r}")
    if isinstance(module, (SyncBatchNorm, nn.SyncBatchNorm)):
        return module
    if isinstance(module, _BatchNorm):
        return _convert(module, backend, process_group)
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child, backend=backend, process_group=process_group)
        if new is not child:
            module.add_module(name, new)
    return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_sync_batchnorm`: each synchronised layer it made becomes its original class again.

    Args:
        module: A model (or a layer) converted by :func:`convert_sync_batchnorm`.

    Returns:
        ``module``, or its replacement when ``module`` is itself a converted layer.

    Examples:
        >>> from torch import nn
        >>> net = revert_sync_batchnorm(convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(4))))
        >>> type(net[0]).__name__
        'BatchNorm1d'
    """
    original = getattr(module, _ORIGINAL, None)
    if isinstance(module, _BatchNorm) and original is not None:
        layer = original(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        _move_state(module, layer)
        return layer  # type: ignore[no-any-return]
    for name, child in module.named_children():
        new = revert_sync_batchnorm(child)
        if new is not child:
            module.add_module(name, new)
    return module
