"""Argument checks shared by the heads (private)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

__all__ = ["check_feature_map", "check_features", "check_int", "check_pool_types", "check_probability"]

POOL_TYPES = ("avg", "max")


def check_int(name: str, value: int, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int >= minimum`` (bools refused), else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def check_probability(name: str, value: float) -> float:
    """Return ``value`` as a float if it lies in ``[0, 1]``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value}")
    return float(value)


def check_pool_types(pool_types: Sequence[str]) -> tuple[str, ...]:
    """Validate CBAM channel-gate pool types: a non-empty subset of ``("avg", "max")``."""
    if isinstance(pool_types, str):
        raise TypeError(f"pool_types must be a sequence of names such as ('avg', 'max'), got {pool_types!r}")
    pools = tuple(pool_types)
    if not pools:
        raise ValueError("pool_types must name at least one pooling, got an empty sequence")
    unknown = [p for p in pools if p not in POOL_TYPES]
    if unknown:
        raise ValueError(f"pool_types must contain only {POOL_TYPES}, got unknown {unknown}")
    if len(set(pools)) != len(pools):
        raise ValueError(f"pool_types must not repeat a pooling, got {list(pools)}")
    return pools


def _check_float_tensor(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_feature_map(name: str, x: Tensor, channels: int | None = None) -> None:
    """Check that ``x`` is a floating, non-empty ``(N, C, H, W)`` tensor (``C == channels`` if given)."""
    _check_float_tensor(name, x)
    want = "C" if channels is None else str(channels)
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (N, {want}, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (dim 1), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")


def check_features(name: str, x: Tensor, dim: int | None = None) -> None:
    """Check that ``x`` is a floating ``(N, D)`` tensor with ``N >= 1`` (and ``D == dim`` if given)."""
    _check_float_tensor(name, x)
    want = "D" if dim is None else str(dim)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, {want}) with N >= 1, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} features (dim 1), got shape {tuple(x.shape)}")
