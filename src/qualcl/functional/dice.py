"""The soft Dice loss of the local-discrimination code (its downstream segmentation objective)."""

from __future__ import annotations

import torch
from torch import Tensor

from qualcl._validation import _tracing, check_finite, check_float_tensor, check_nonnegative

__all__ = ["soft_dice_loss"]


def _check_unit_range(name: str, x: Tensor, what: str) -> None:
    """Refuse values outside ``[0, 1]`` (0/255 masks, logits), naming ``name`` and the range found."""
    if _tracing() or x.numel() == 0:
        return
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{name} must hold {what} in [0, 1], got values in [{low:g}, {high:g}]")


def soft_dice_loss(probs: Tensor, target: Tensor, *, smooth: float = 1.0, per_image: bool = True) -> Tensor:
    r"""Soft Dice loss, ``−2 Σ p·y / (Σ y + Σ p + s)``, per image and averaged or over the whole batch.

    .. math::
        \ell_n = -\frac{2 \sum_p \hat y_n(p)\, y_n(p)}{\sum_p y_n(p) + \sum_p \hat y_n(p) + s}

    With ``per_image=True`` (the default) each image gets its own Dice and the loss is their mean.
    With ``per_image=False`` the sums run over every pixel of the batch and one Dice is returned,
    which is what the local-discrimination code computes (its ``dice_loss`` flattens the batch).
    The two are equal when the batch holds one image; otherwise they differ (the batch form
    weighs images by their foreground area).

    Where the target is empty (an image's, or with ``per_image=False`` the whole batch's) the loss
    is computed on ``1 − ŷ`` and ``1 − y`` (the background), as in the code, so an empty mask still
    asks for an empty prediction. The value lies in ``(−1, 0]`` (the code's sign: minimised
    towards −1).

    Args:
        probs: ``(N, 1, H, W)`` or ``(N, H, W)`` predicted foreground probabilities in ``[0, 1]``
            (apply a sigmoid to logits first).
        target: The binary (or soft) target in ``[0, 1]``, same shape (bool, integer 0/1 or float).
        smooth: ``s >= 0`` (1 in the code).
        per_image: One Dice per image, averaged (``True``), or one Dice over the batch (``False``,
            the code's form).

    Returns:
        Scalar loss (float32 for half inputs).

    Raises:
        TypeError: ``probs`` is not a floating tensor, ``target`` not a tensor.
        ValueError: Shapes that differ or have more than one channel, values outside ``[0, 1]``
            (logits, 0/255 masks), non-finite values, a negative or NaN ``smooth``.

    Examples:
        >>> import torch
        >>> y = torch.zeros(1, 4, 4); y[0, :2] = 1
        >>> round(float(soft_dice_loss(y, y)), 3)
        -0.941
        >>> t = torch.zeros(2, 2, 2); t[0] = 1; t[1, 0, 0] = 1  # 4 and 1 foreground pixels
        >>> round(float(soft_dice_loss(t, t)), 3), round(float(soft_dice_loss(t, t, per_image=False)), 3)
        (-0.778, -0.909)

    Reference:
        Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023
        (``step2_downstream_tasks/STEP1_transfer.py``); Milletari et al., "V-Net", 3DV 2016.
    """
    check_float_tensor("probs", probs)
    if probs.ndim not in (3, 4) or probs.numel() == 0 or (probs.ndim == 4 and probs.shape[1] != 1):
        raise ValueError(
            f"probs must be (N, H, W) or (N, 1, H, W) (one foreground channel), got shape {tuple(probs.shape)}"
        )
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.shape != probs.shape:
        raise ValueError(f"target must have the shape of probs {tuple(probs.shape)}, got {tuple(target.shape)}")
    if target.is_complex():
        raise TypeError(f"target must be a real (bool, integer or float) tensor, got dtype {target.dtype}")
    smooth = check_nonnegative("smooth", smooth)
    if not isinstance(per_image, bool):
        raise TypeError(f"per_image must be a bool, got {type(per_image).__name__}")
    check_finite("probs", probs)
    check_finite("target", target)
    _check_unit_range("probs", probs.detach(), "probabilities")
    _check_unit_range("target", target.detach(), "mask values")
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    p = probs.to(dtype).flatten(1 if per_image else 0)
    y = target.to(dtype).flatten(1 if per_image else 0)
    empty = y.sum(dim=-1, keepdim=True) == 0
    p = torch.where(empty, 1 - p, p)
    y = torch.where(empty, 1 - y, y)
    return (-2 * (p * y).sum(dim=-1) / (y.sum(dim=-1) + p.sum(dim=-1) + smooth)).mean()
