"""Argument checks shared by every primitive.

Each check raises an error that names the argument, says what was expected and what came,
so that a user reading the traceback knows which call site to fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "check_embeddings",
    "check_finite",
    "check_mask",
    "check_positive",
    "check_reduction",
    "check_weights",
]

REDUCTIONS = ("mean", "sum", "none")


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float if it is finite and > 0, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_reduction(reduction: str) -> str:
    """Validate a torch-style ``reduction`` string."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_finite(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def check_embeddings(name: str, x: Tensor, *, dim: int | None = None, allow_empty: bool = False) -> None:
    """Check that ``x`` is a finite floating ``(N, D)`` tensor.

    Args:
        name: Argument name used in error messages.
        x: Tensor to check.
        dim: Expected feature size ``D``, if it must match another input.
        allow_empty: Whether ``N = 0`` is acceptable.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): at least one row is needed")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero features (shape {tuple(x.shape)})")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have D = {dim} features to match, got shape {tuple(x.shape)}")
    check_finite(name, x)


def check_mask(name: str, mask: Tensor, shape: Sequence[int]) -> None:
    """Check that ``mask`` is a boolean tensor of exactly ``shape``."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")


def check_weights(name: str, weights: Tensor, n: int) -> None:
    """Check per-anchor weights: a finite, non-negative ``(n,)`` floating tensor."""
    if not isinstance(weights, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weights).__name__}")
    if tuple(weights.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(weights.shape)}")
    if not weights.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {weights.dtype}")
    check_finite(name, weights)
    if bool((weights < 0).any()):
        raise ValueError(f"{name} must be non-negative")
