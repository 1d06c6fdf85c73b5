"""Focal loss with hard or soft targets, and the batch-entropy regulariser (MAXL / MKCNet)."""

from __future__ import annotations

import torch
from torch import Tensor

from qualcl._validation import check_finite, check_nonnegative, check_reduction, check_weights
from qualcl.functional.reduction import weighted_reduce

__all__ = ["batch_entropy", "focal_loss"]


def check_logits(logits: Tensor, name: str = "logits") -> None:
    """Check ``(N, C)`` finite floating logits, ``N, C >= 1`` (errors name the argument ``name``)."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, C) with C >= 1, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0): at least one row is needed")
    check_finite(name, logits)


def _target_distribution(target: Tensor, n: int, c: int, dtype: torch.dtype) -> Tensor:
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.ndim == 1 and not target.is_floating_point():
        if target.shape[0] != n:
            raise ValueError(f"target must have shape ({n},) for hard labels, got {tuple(target.shape)}")
        if bool((target < 0).any()) or bool((target >= c).any()):
            raise ValueError(f"target class ids must lie in [0, {c - 1}]")
        return torch.nn.functional.one_hot(target.long(), c).to(dtype)
    if target.ndim == 2 and target.is_floating_point():
        if tuple(target.shape) != (n, c):
            raise ValueError(f"target must have shape ({n}, {c}) for soft labels, got {tuple(target.shape)}")
        check_finite("target", target)
        if bool((target < 0).any()):
            raise ValueError("target (soft labels) must be non-negative")
        return target.to(dtype)
    raise ValueError(
        "target must be (N,) integer class ids or (N, C) floating soft labels, "
        f"got shape {tuple(target.shape)} and dtype {target.dtype}"
    )


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Focal loss on softmax probabilities with hard or soft targets.

    .. math::
        \mathrm{FL}_i = -\sum_c y_{ic}\,(1 - p_{ic})^{\gamma} \log p_{ic}, \quad p_i = \mathrm{softmax}(z_i)

    With ``gamma = 0`` it is cross-entropy (with soft targets, soft cross-entropy). ``log p`` is
    computed with ``log_softmax`` (MAXL/MKCNet write ``log(p + 1e-20)``; the two agree wherever
    ``p > 1e-20`` and this one stays exact beyond). Computed in float32 for half inputs.

    Args:
        logits: ``(N, C)`` unnormalised scores.
        target: ``(N,)`` integer class ids, or ``(N, C)`` non-negative soft labels (e.g. the masked
            auxiliary targets of MKCNet's meta learner).
        gamma: Focusing parameter ``>= 0``.
        weights: ``(N,)`` non-negative per-sample weights.
        reduction: ``"mean"`` (weighted mean over samples), ``"sum"`` or ``"none"``.

    Returns:
        Scalar loss, or ``(N,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> focal_loss(torch.randn(4, 3), torch.tensor([0, 2, 1, 0]), gamma=2.0).shape
        torch.Size([])

    Reference:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017; in the MAXL form used by
        MKCNet (Che et al., CVPR 2023), Eq. 1.
    """
    gamma = check_nonnegative("gamma", gamma)
    check_reduction(reduction)
    check_logits(logits)
    if weights is not None:
        check_weights("weights", weights, logits.shape[0])
    return weighted_reduce(focal_per_sample(logits, target, gamma), weights, reduction)


def focal_per_sample(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    """``(N,)`` focal losses of checked ``(N, C)`` logits (see :func:`focal_loss`; the target is checked here)."""
    n, c = logits.shape
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    y = _target_distribution(target, n, c, dtype)
    log_p = torch.log_softmax(logits.to(dtype), dim=1)
    # (1 - p)^γ, its base kept >= the smallest normal float: at p = 1 exactly (a confident row) the
    # derivative γ(1 - p)^(γ-1) is infinite for γ < 1 and, times 0, would make the gradient NaN; the
    # clamp passes no gradient there, which is the limit of the exact one (it vanishes as p → 1).
    one_minus_p = (1 - log_p.exp()).clamp_min(torch.finfo(dtype).tiny)
    modulator = one_minus_p.pow(gamma) if gamma != 0 else torch.ones_like(log_p)
    return -(y * modulator * log_p).sum(dim=1)


def batch_entropy(probs: Tensor, *, eps: float = 1e-20) -> Tensor:
    r"""Entropy of the batch-averaged distribution, ``H(mean_i p_i)``.

    .. math::
        H = -\sum_c \bar p_c \log(\bar p_c + \epsilon), \quad \bar p = \frac{1}{N}\sum_i p_i

    MKCNet and MAXL *maximise* it to keep the meta learner's auxiliary labels from collapsing;
    their regulariser is ``R = -batch_entropy(y)``. This is the entropy of the mean, not the mean
    per-sample entropy.

    Args:
        probs: ``(N, C)`` probabilities (rows on the simplex).
        eps: Added inside the log, as in the reference code.

    Returns:
        Scalar entropy in nats, ``0 <= H <= log C``.

    Examples:
        >>> import torch
        >>> batch_entropy(torch.eye(4))  # four one-hot rows, uniform on average
        tensor(1.3863)

    Reference:
        Liu et al., "Self-Supervised Generalisation with Meta Auxiliary Learning" (MAXL), NeurIPS 2019;
        MKCNet (Che et al., CVPR 2023).
    """
    if not isinstance(probs, Tensor):
        raise TypeError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probs must have shape (N, C) with N, C >= 1, got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise TypeError(f"probs must be a floating-point tensor, got dtype {probs.dtype}")
    check_finite("probs", probs)
    if bool((probs < 0).any()):
        raise ValueError("probs must be non-negative")
    mean = probs.mean(dim=0)
    return -(mean * torch.log(mean + eps)).sum()
