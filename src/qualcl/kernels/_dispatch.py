"""Which implementation of a kernel runs: Triton on CUDA, streaming torch elsewhere, naive for tests."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor

__all__ = [
    "DENSE_LIMIT",
    "IMPLS",
    "check_impl",
    "interpreting",
    "prefers_dense",
    "resolve_impl",
    "through_custom_op",
    "triton_available",
]

IMPLS = ("auto", "triton", "torch", "naive")
DENSE_LIMIT = 1 << 20
"""Up to this many logits (N·M, e.g. 1024 × 1024) ``impl="auto"`` in the loss modules keeps their dense path."""


def check_impl(impl: str) -> str:
    """Validate an ``impl`` argument."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def prefers_dense(impl: str, n: int, m: int) -> bool:
    """Whether a loss module takes its dense path for ``n × m`` logits.

    ``impl="naive"`` always does; ``impl="auto"`` does up to :data:`DENSE_LIMIT` logits, where the
    dense matrix is small and faster than streaming (and bitwise equal to peers such as open_clip);
    ``"torch"`` and ``"triton"`` never do.
    """
    check_impl(impl)
    return impl == "naive" or (impl == "auto" and n * m <= DENSE_LIMIT)


def through_custom_op() -> bool:
    """Whether a kernel is called through its registered ``torch.library`` op (else its eager twin).

    The registered ops (``qualcl::info_nce``, ``qualcl::topk_similarity``) are what ``torch.compile``
    and ``torch.export`` see; but torch wraps every custom-op implementation so that its first call
    imports the compiler stack (``torch._dynamo``, sympy, triton: seconds and ~160 MiB). Eager calls
    therefore run the same implementation, with the same backward, through a plain
    ``torch.autograd.Function``; the op is used while compiling, exporting or under a fake-tensor mode.
    """
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return True
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str, *tensors: Tensor) -> str:
    """Turn ``impl`` into the path that runs: ``"triton"``, ``"torch"`` or ``"naive"``.

    ``"auto"`` picks Triton for CUDA tensors when triton is importable and the streaming torch path
    otherwise. ``"triton"`` needs CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.

    Args:
        impl: ``"auto"``, ``"triton"``, ``"torch"`` or ``"naive"``.
        tensors: The op's input tensors (their device decides).

    Returns:
        The resolved implementation name.

    Raises:
        ValueError: For an unknown ``impl`` or ``"triton"`` where it cannot run.
    """
    check_impl(impl)
    on_cuda = all(t.is_cuda for t in tensors)
    if impl == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if impl == "triton":
        if not triton_available():
            raise ValueError("impl='triton' needs the triton package, which is not installed")
        if not (on_cuda or (interpreting() and not any(t.is_cuda for t in tensors))):
            devices = sorted({str(t.device) for t in tensors})
            raise ValueError(
                f"impl='triton' needs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {devices}"
            )
    return impl
