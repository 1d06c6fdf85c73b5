"""Binary segmentation metrics per image (torchmetrics' Dice and IoU), overall and per quality stratum."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.segmentation import dice_score, mean_iou

from qualcl._validation import check_finite, check_float_tensor, check_number
from qualcl.metrics.strata import stratify

__all__ = ["binarize", "segmentation_metrics", "segmentation_scores", "stratified_segmentation_metrics"]


def _masks(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.numel() == 0:
        raise ValueError(
            f"{name} must be (N, H, W) or (N, 1, H, W) masks (one foreground channel), got shape {tuple(x.shape)}"
        )
    return x


def _check_binary(name: str, x: Tensor) -> None:
    """Refuse masks with values other than 0 and 1 (0/255 images, probabilities, class ids)."""
    if x.dtype == torch.bool:
        return
    if x.is_complex():
        raise TypeError(f"{name} must be bool or 0/1 masks, got dtype {x.dtype}")
    if x.is_floating_point():
        check_finite(name, x)
    outside = (x != 0) & (x != 1)
    if bool(outside.any()):
        values = x[outside]
        low, high = float(values.min()), float(values.max())
        hint = (
            "0/255 images: divide by 255 or compare with > 0"
            if high > 1
            else "probabilities: threshold them with binarize()"
        )
        raise ValueError(
            f"{name} must be binary masks (bool or 0/1), got {int(outside.sum())} value(s) in [{low:g}, {high:g}] "
            f"({hint})"
        )


def binarize(probs: Tensor, threshold: float = 0.5) -> Tensor:
    """``probs > threshold`` as bool masks ``(N, H, W)`` (``(N, 1, H, W)`` accepted).

    ``probs`` must be probabilities in ``[0, 1]``: logits are refused (a threshold of 0.5 on logits
    is a threshold of 0.62 on probabilities).

    Examples:
        >>> import torch
        >>> binarize(torch.tensor([[[0.2, 0.7]]])).tolist()
        [[[False, True]]]
    """
    threshold = check_number("threshold", threshold, minimum=0.0, maximum=1.0)
    probs = _masks("probs", probs)
    check_float_tensor("probs", probs)
    check_finite("probs", probs)
    if bool((probs < 0).any()) or bool((probs > 1).any()):
        low, high = float(probs.min()), float(probs.max())
        raise ValueError(
            f"probs must be probabilities in [0, 1], got values in [{low:g}, {high:g}] (apply a sigmoid to logits)"
        )
    return probs > threshold


def segmentation_scores(preds: Tensor, target: Tensor) -> dict[str, Tensor]:
    r"""Per-image Dice and IoU of binary masks (torchmetrics), NaN where the truth is empty.

    .. math::
        \mathrm{Dice} = \frac{2|P \cap T|}{|P| + |T|}, \qquad \mathrm{IoU} = \frac{|P \cap T|}{|P \cup T|}

    An image whose true mask is empty has no foreground to find: both scores are NaN there and
    left out of the means (MONAI's ``DiceMetric(ignore_empty=True)`` convention).

    Args:
        preds: ``(N, H, W)`` (or ``(N, 1, H, W)``) bool or 0/1 predicted masks (any dtype; other
            values, such as 0/255 ``uint8`` images or probabilities, are refused).
        target: The true masks, same shape and rule.

    Returns:
        ``{"dice": (N,), "iou": (N,)}`` float64.

    Raises:
        ValueError: Shapes that differ or hold more than one channel, values other than 0 and 1.

    Examples:
        >>> import torch
        >>> p = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 0]]]).bool()
        >>> t = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]]).bool()
        >>> {k: [round(v, 3) for v in s.tolist()] for k, s in segmentation_scores(p, t).items()}
        {'dice': [0.667, nan], 'iou': [0.5, nan]}
    """
    preds, target = _masks("preds", preds), _masks("target", target)
    if preds.shape != target.shape:
        raise ValueError(
            f"preds and target must have the same shape, got {tuple(preds.shape)} and {tuple(target.shape)}"
        )
    for name, x in (("preds", preds), ("target", target)):
        _check_binary(name, x)
    p, t = preds.long().unsqueeze(1), target.long().unsqueeze(1)
    dice = dice_score(p, t, num_classes=1, average="none", input_format="one-hot", aggregation_level="samplewise")
    iou = mean_iou(p, t, num_classes=1, per_class=True, input_format="one-hot")
    empty = ~target.flatten(1).bool().any(dim=1)
    nan = torch.tensor(math.nan, dtype=torch.float64)
    return {
        "dice": torch.where(empty, nan, dice[:, 0].double().cpu()),
        "iou": torch.where(empty, nan, iou[:, 0].double().cpu()),
    }


def _summary(scores: dict[str, Tensor]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, values in scores.items():
        kept = values[~values.isnan()]
        out[name] = float(kept.mean()) if kept.numel() else math.nan
        out[f"{name}_std"] = float(kept.std(unbiased=True)) if kept.numel() > 1 else (0.0 if kept.numel() else math.nan)
    first = next(iter(scores.values()))
    out["images"] = int((~first.isnan()).sum())
    out["empty"] = int(first.isnan().sum())
    return out


def segmentation_metrics(preds: Tensor, target: Tensor) -> dict[str, float]:
    """Mean ± std of the per-image Dice and IoU over the images with foreground, and the counts.

    Returns:
        ``{"dice", "dice_std", "iou", "iou_std", "images", "empty"}``: ``images`` counted, ``empty``
        left out (true mask empty).

    Examples:
        >>> import torch
        >>> t = torch.zeros(2, 4, 4, dtype=torch.bool); t[:, :2] = True
        >>> segmentation_metrics(t, t)["dice"]
        1.0
    """
    return _summary(segmentation_scores(preds, target))


def stratified_segmentation_metrics(
    preds: Tensor, target: Tensor, strata: Tensor, names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """:func:`segmentation_metrics` overall and per stratum (e.g. quality level ``strata[i]`` naming ``names``).

    Every stratum is listed; one without images has ``n`` 0 and NaN metrics (the rule of
    :func:`~qualcl.metrics.stratify`).

    Examples:
        >>> import torch
        >>> t = torch.ones(3, 2, 2, dtype=torch.bool)
        >>> out = stratified_segmentation_metrics(t, t, torch.tensor([0, 1, 1]), ["Good", "Reject"])
        >>> list(out), out["Reject"]["images"]
        (['overall', 'Good', 'Reject'], 2)
    """
    scores = segmentation_scores(preds, target)
    if not isinstance(strata, Tensor) or strata.shape != (scores["dice"].shape[0],) or strata.is_floating_point():
        raise ValueError(
            f"strata must be ({scores['dice'].shape[0]},) integer ids, got {getattr(strata, 'shape', None)}"
        )
    strata = strata.cpu()
    if strata.numel() and (int(strata.min()) < 0 or int(strata.max()) >= len(names)):
        raise ValueError(f"strata ids must lie in [0, {len(names) - 1}] to name {list(names)}")
    return stratify(lambda keep: _summary({k: v[keep] for k, v in scores.items()}), strata, names)
