"""Argument checks shared by every primitive: the one place a new primitive takes its checks from.

Each check raises an error that names the argument, says what was expected and what came, so that
a user reading the traceback knows which call site to fix: ``TypeError`` for a wrong type or dtype,
``ValueError`` for a wrong shape, range or value. Checks that return something return the value
in canonical form (``int``, ``float``, an ``int64`` tensor).

Groups:

- Python numbers and options: :func:`check_int`, :func:`check_number` (and its shorthands
  :func:`check_positive`, :func:`check_nonnegative`, :func:`check_probability`),
  :func:`check_choice`, :func:`check_reduction`, :func:`check_pool_types`, and :func:`check_scalar` (a
  number or a one-element tensor: logit scales and biases, temperatures).
- Float tensors: :func:`check_float_tensor`, :func:`check_finite`, :func:`check_embeddings`
  (``(N, D)``), :func:`check_features` (``(N, D)``, heads), :func:`check_feature_map`
  (``(N, C, H, W)``), :func:`check_batch_statistics` (a BatchNorm in training needs two samples).
- Integer tensors: :func:`check_integer_tensor`, :func:`check_labels` (any integer values),
  :func:`check_class_ids` (in ``[0, num_classes)``), :func:`check_index` (column indices, ``-1`` =
  none), and :func:`check_mask`, :func:`check_weights`.

The data-dependent checks (finiteness, value ranges of tensors) read the tensor's values, which
synchronises a GPU; they are skipped while ``torch.compile`` traces.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "POOL_TYPES",
    "REDUCTIONS",
    "check_batch_statistics",
    "check_choice",
    "check_class_ids",
    "check_embeddings",
    "check_feature_map",
    "check_features",
    "check_finite",
    "check_float_tensor",
    "check_index",
    "check_int",
    "check_integer_tensor",
    "check_labels",
    "check_mask",
    "check_nonnegative",
    "check_number",
    "check_padding_mask",
    "check_pool_types",
    "check_positive",
    "check_probability",
    "check_reduction",
    "check_tokens",
    "check_weights",
]

REDUCTIONS = ("mean", "sum", "none")
POOL_TYPES = ("avg", "max")


def _tracing() -> bool:
    return bool(torch.compiler.is_compiling())


# ---------------------------------------------------------------------------------- Python values
def check_int(name: str, value: Any, *, minimum: int | None = 1, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer (bools refused) within the bounds, else raise.

    Args:
        name: Argument name for the message.
        value: A Python or NumPy integer.
        minimum: Smallest allowed value (``None``: no bound).
        maximum: Largest allowed value (``None``: no bound).
    """
    if minimum is not None and maximum is not None:
        want = f"an int in [{minimum}, {maximum}]"
    else:
        bound = f" >= {minimum}" if minimum is not None else (f" <= {maximum}" if maximum is not None else "")
        want = "an int" + bound
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {want}, got {number}")
    return number


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    finite: bool = True,
) -> float:
    """Return ``value`` as a ``float`` if it is a real number within the bounds, else raise.

    NaN is always refused; infinities are refused unless ``finite=False``.

    Args:
        name: Argument name for the message.
        value: A Python or NumPy real number (bools refused).
        minimum: Lower bound (inclusive unless ``exclusive_minimum``).
        maximum: Upper bound (inclusive).
        exclusive_minimum: Whether ``value == minimum`` is refused.
        finite: Whether ``±inf`` is refused.
    """
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive_minimum else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    want = ("a finite number" if finite else "a number") + (" " + " and ".join(parts) if parts else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}")
    number = float(value)
    bad = math.isnan(number) or (finite and math.isinf(number))
    if minimum is not None:
        bad = bad or number < minimum or (exclusive_minimum and number == minimum)
    if maximum is not None:
        bad = bad or number > maximum
    if bad:
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return number


def check_positive(name: str, value: Any) -> float:
    """A finite number ``> 0`` (temperatures, margins, scales)."""
    return check_number(name, value, minimum=0.0, exclusive_minimum=True)


def check_nonnegative(name: str, value: Any) -> float:
    """A finite number ``>= 0`` (focusing parameters, weights)."""
    return check_number(name, value, minimum=0.0)


def check_probability(name: str, value: Any) -> float:
    """A number in ``[0, 1]``."""
    return check_number(name, value, minimum=0.0, maximum=1.0)


def check_scalar(name: str, value: Any, *, positive: bool = False) -> Tensor | float:
    """A logit scale, bias or temperature: a finite number, or a one-element floating tensor kept for its gradient.

    Args:
        name: Argument name for the message.
        value: A Python or NumPy real number (bools refused), or a floating tensor with one element.
        positive: Whether values ``<= 0`` are refused (for a tensor not checked while ``torch.compile``
            traces: it would read the value).

    Returns:
        The number as a ``float``, or the tensor as a 0-dim view (its autograd graph kept).

    Example:
        >>> check_scalar("logit_scale", 10), check_scalar("logit_bias", torch.tensor([-10.0]))
        (10.0, tensor(-10.))
    """
    if isinstance(value, Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(
                f"{name} must be a float or a one-element floating tensor, "
                f"got a {value.dtype} tensor of shape {tuple(value.shape)}"
            )
        check_finite(name, value)
        if positive and not _tracing() and float(value.detach()) <= 0:
            raise ValueError(f"{name} must be > 0, got {float(value.detach())}")
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a float or a one-element floating tensor, got {type(value).__name__} {value!r}"
        )
    return check_number(name, value, minimum=0.0 if positive else None, exclusive_minimum=positive)


def check_top_k(top_k: Any, m: int, *, name: str = "top_k", optional: bool = True) -> int | None:
    """An int in ``[1, m]`` (``m`` = number of candidates) for a per-row top-K, or ``None`` if ``optional``."""
    if top_k is None and optional:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got {type(top_k).__name__}")
    if not 1 <= int(top_k) <= m:
        raise ValueError(f"{name} must be in [1, M={m}] (M = number of candidates), got {top_k}")
    return int(top_k)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_reduction(reduction: Any) -> str:
    """A torch-style ``reduction``: ``"mean"``, ``"sum"`` or ``"none"``."""
    return check_choice("reduction", reduction, REDUCTIONS)


def check_pool_types(pool_types: Sequence[str]) -> tuple[str, ...]:
    """CBAM channel-gate pool types: a non-empty subset of ``("avg", "max")`` without repeats."""
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


# ---------------------------------------------------------------------------------- float tensors
def _check_tensor(name: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float_tensor(name: str, x: Any) -> Tensor:
    """A floating-point tensor (integer, bool and complex tensors refused)."""
    tensor = _check_tensor(name, x)
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    return tensor


def check_finite(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` if the floating tensor ``x`` holds NaN or infinite values."""
    if _tracing() or not x.is_floating_point() or x.numel() == 0:
        return
    if bool(torch.isfinite(x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32))):
        return  # one reduction: a NaN or an inf anywhere makes the sum non-finite (an overflow only re-checks)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def check_embeddings(
    name: str, x: Any, *, dim: int | None = None, allow_empty: bool = False, nonzero: bool = False
) -> None:
    """Check that ``x`` is a finite floating ``(N, D)`` tensor.

    Args:
        name: Argument name used in error messages.
        x: Tensor to check.
        dim: Expected feature size ``D``, if it must match another input.
        allow_empty: Whether ``N = 0`` is acceptable.
        nonzero: Whether every row must have a non-zero norm (rows that are L2-normalised: the
            direction of a zero vector is undefined, and its normalisation gradient explodes).
    """
    check_float_tensor(name, x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): at least one row is needed")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero features (shape {tuple(x.shape)})")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have D = {dim} features to match, got shape {tuple(x.shape)}")
    check_finite(name, x)
    if nonzero and not _tracing() and x.shape[0]:
        zero = torch.linalg.vector_norm(x, dim=1) == 0  # one cheap pass; tiny rows whose squares underflow
        if bool(zero.any()):  # also read 0 here, so the rows are checked exactly before anything is said
            zero = (x == 0).all(dim=1)
        if bool(zero.any()):
            rows = zero.nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"{name} has {int(zero.sum())} all-zero row(s) (first: {rows}); a zero vector has no "
                "direction to L2-normalise"
            )


def check_features(name: str, x: Any, dim: int | None = None) -> None:
    """Check that ``x`` is a finite floating ``(N, D)`` tensor with ``N >= 1`` (and ``D == dim`` if given)."""
    check_float_tensor(name, x)
    want = "D" if dim is None else str(dim)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, {want}) with N >= 1, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} features (dim 1), got shape {tuple(x.shape)}")
    check_finite(name, x)


def check_feature_map(name: str, x: Any, channels: int | None = None) -> None:
    """Check that ``x`` is a finite, floating, non-empty ``(N, C, H, W)`` tensor (``C == channels`` if given)."""
    check_float_tensor(name, x)
    want = "C" if channels is None else str(channels)
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (N, {want}, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (dim 1), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    check_finite(name, x)


def check_tokens(name: str, x: Any, dim: int | None = None) -> Tensor:
    """A finite floating ``(N, L, D)`` token tensor with ``N, L >= 1`` (``D == dim`` if given)."""
    tensor = check_float_tensor(name, x)
    want = "D" if dim is None else str(dim)
    if tensor.ndim != 3 or tensor.shape[0] == 0 or tensor.shape[1] == 0 or (dim is not None and tensor.shape[2] != dim):
        raise ValueError(f"{name} must have shape (N, L, {want}) with N, L >= 1, got shape {tuple(tensor.shape)}")
    check_finite(name, tensor)
    return tensor


def check_padding_mask(name: str, mask: Any, tokens: Tensor) -> Tensor | None:
    """A bool ``(N, L)`` mask (``True`` = padding) matching ``tokens``, with a real token in every row."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor (True = padding), got {got}")
    if tuple(mask.shape) != tuple(tokens.shape[:2]):
        raise ValueError(f"{name} must have shape (N, L) = {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")
    if not _tracing():
        empty = mask.all(dim=1)
        if bool(empty.any()):
            rows = empty.nonzero().flatten()[:5].tolist()
            raise ValueError(f"{name} pads every token of row(s) {rows}: each sequence needs one real token")
    return mask


def check_batch_statistics(name: str, x: Tensor, module: torch.nn.Module) -> None:
    """Refuse a batch too small for the batch statistics of ``module``'s training BatchNorm layers.

    BatchNorm in training mode normalises by the batch's own statistics, which need more than one
    value per channel: two samples for ``(N, C)`` features, ``N·H·W > 1`` for maps. ``x`` is the
    module's input (its first dimension is the batch).
    """
    values = x.numel() // max(x.shape[1], 1) if x.ndim >= 2 else x.numel()
    if not module.training or values > 1:
        return
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if any(m.training for m in norms):
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} has {values} value(s) per channel; BatchNorm in training mode "
            "needs more than one (use a batch of at least 2, or call .eval())"
        )


# -------------------------------------------------------------------------------- integer tensors
def check_integer_tensor(
    name: str, x: Any, *, shape: Sequence[int] | None = None, device: torch.device | None = None, what: str = "ids"
) -> Tensor:
    """An integer tensor (float, bool, complex refused) of ``shape`` on ``device`` if given; returned as int64."""
    tensor = _check_tensor(name, x)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of {what}, got dtype {tensor.dtype}")
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if device is not None and tensor.device != device:
        raise ValueError(f"{name} must be on {device} like the embeddings, got {tensor.device}")
    return tensor.long()


def check_labels(name: str, labels: Any, n: int, device: torch.device | None = None) -> Tensor:
    """An ``(n,)`` integer label vector (any values: labels are compared, not indexed); returned as int64."""
    return check_integer_tensor(name, labels, shape=(n,), device=device, what="labels")


def check_class_ids(
    name: str, x: Any, num_classes: int, *, n: int | None = None, device: torch.device | None = None
) -> Tensor:
    """A 1-D integer tensor of class ids in ``[0, num_classes)`` (``n`` entries if given); returned as int64."""
    ids = check_integer_tensor(name, x, device=device, what="class ids")
    if ids.ndim != 1 or (n is not None and ids.shape[0] != n):
        want = "(N,)" if n is None else f"({n},)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(ids.shape)}")
    if ids.numel() and not _tracing() and (bool((ids < 0).any()) or bool((ids >= num_classes).any())):
        bad = sorted({int(v) for v in ids[(ids < 0) | (ids >= num_classes)].tolist()})[:5]
        raise ValueError(f"{name} must hold class ids in [0, {num_classes - 1}], got out-of-range id(s) {bad}")
    return ids


def check_index(name: str, index: Any, n: int, m: int, device: torch.device) -> Tensor:
    """An ``(n,)`` integer column-index vector with entries in ``[-1, m)`` (``-1`` = none); returned as int64."""
    if isinstance(index, Tensor) and index.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one column per query row), got {tuple(index.shape)}")
    ids = check_integer_tensor(name, index, shape=(n,), device=device, what="column indices")
    if n and not _tracing() and (bool((ids < -1).any()) or bool((ids >= m).any())):
        raise ValueError(
            f"{name} entries must lie in [-1, M={m}) (-1 = none), got min {int(ids.min())}, max {int(ids.max())}"
        )
    return ids


def check_token_ids(
    name: str,
    ids: Any,
    vocab_size: int,
    *,
    context_length: int | None = None,
    allow_empty: bool = False,
    owner: str = "the vocabulary",
) -> Tensor:
    """``(N, T)`` integer token ids in ``[0, vocab_size)`` (``T <= context_length`` if given); returned as int64.

    ``owner`` names what the ids must fit in the range error ("the decoder's vocabulary", ...).
    Empty ``N`` or ``T`` are refused unless ``allow_empty``.
    """
    tensor = check_integer_tensor(name, ids)
    if tensor.ndim == 2 and tensor.shape[0] and not tensor.shape[1] and not allow_empty:
        raise ValueError(f"{name} has no tokens (T = 0): captions must not be empty")
    if tensor.ndim != 2 or (not allow_empty and 0 in tensor.shape):
        sizes = "" if allow_empty else " with N, T >= 1"
        raise ValueError(f"{name} must have shape (N, T){sizes}, got shape {tuple(tensor.shape)}")
    if context_length is not None and tensor.shape[1] > context_length:
        raise ValueError(f"captions of T = {tensor.shape[1]} tokens exceed context_length = {context_length}")
    if tensor.numel() and not _tracing():
        low, high = int(tensor.min()), int(tensor.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} must lie in [0, vocab_size={vocab_size}), got values in [{low}, {high}]: "
                f"the tokenizer and {owner} do not match"
            )
    return tensor


def check_mask(name: str, mask: Any, shape: Sequence[int]) -> None:
    """Check that ``mask`` is a boolean tensor of exactly ``shape``."""
    _check_tensor(name, mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")


def check_weights(name: str, weights: Any, n: int) -> None:
    """Check per-anchor weights: a finite, non-negative ``(n,)`` floating tensor."""
    _check_tensor(name, weights)
    if tuple(weights.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(weights.shape)}")
    check_float_tensor(name, weights)
    check_finite(name, weights)
    if not _tracing() and bool((weights < 0).any()):
        raise ValueError(f"{name} must be non-negative, got min {float(weights.min())}")
