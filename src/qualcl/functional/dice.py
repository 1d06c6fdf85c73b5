"""The soft Dice loss of the local-discrimination code (its downstream segmentation objective)."""

from __future__ import annotations

import torch
from torch import Tensor

from qualcl._validation import check_finite, check_float_tensor

__all__ = ["soft_dice_loss"]


def soft_dice_loss(probs: Tensor, target: Tensor, *, smooth: float = 1.0) -> Tensor:
    r"""Soft Dice loss per image, averaged: ``−2 Σ p·y / (Σ y + Σ p + s)``, on complements where ``y`` is empty.

    .. math::
        \ell_n = -\frac{2 \sum_p \hat y_n(p)\, y_n(p)}{\sum_p y_n(p) + \sum_p \hat y_n(p) + s}

    For an image whose target is empty the loss is computed on ``1 − ŷ`` and ``1 − y`` (the
    background), as in the code, so an empty mask still asks for an empty prediction. The value
    lies in ``(−1, 0]`` (the code's sign: minimised towards −1).

    Args:
        probs: ``(N, 1, H, W)`` or ``(N, H, W)`` predicted foreground probabilities.
        target: The binary (or soft) target, same shape.
        smooth: ``s`` (1 in the code).

    Returns:
        Scalar mean over images (float32 for half inputs).

    Examples:
        >>> import torch
        >>> y = torch.zeros(1, 4, 4); y[0, :2] = 1
        >>> round(float(soft_dice_loss(y, y)), 3)
        -0.941

    Reference:
        Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023
        (``step2_downstream_tasks/STEP1_transfer.py``); Milletari et al., "V-Net", 3DV 2016.
    """
    check_float_tensor("probs", probs)
    if not isinstance(target, Tensor) or target.shape != probs.shape:
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target must have the shape of probs {tuple(probs.shape)}, got {shape}")
    if probs.ndim not in (3, 4) or probs.numel() == 0:
        raise ValueError(f"probs must be (N, H, W) or (N, 1, H, W), got shape {tuple(probs.shape)}")
    check_finite("probs", probs)
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    p = probs.to(dtype).flatten(1)
    y = target.to(dtype).flatten(1)
    empty = (y.sum(dim=1) == 0)[:, None]
    p = torch.where(empty, 1 - p, p)
    y = torch.where(empty, 1 - y, y)
    return (-2 * (p * y).sum(dim=1) / (y.sum(dim=1) + p.sum(dim=1) + smooth)).mean()
