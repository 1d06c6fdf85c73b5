"""Binary segmentation metrics per image (torchmetrics' Dice and IoU), overall and per quality stratum."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.segmentation import dice_score, mean_iou

from qualcl._validation import check_finite, check_float_tensor, check_number

__all__ = ["binarize", "segmentation_metrics", "segmentation_scores", "stratified_segmentation_metrics"]


def _masks(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.numel() == 0:
        raise ValueError(f"{name} must be (N, H, W) or (N, 1, H, W) masks, got shape {tuple(x.shape)}")
    return x


def binarize(probs: Tensor, threshold: float = 0.5) -> Tensor:
    """``probs > threshold`` as bool masks ``(N, H, W)`` (``(N, 1, H, W)`` accepted).

    Examples:
        >>> import torch
        >>> binarize(torch.tensor([[[0.2, 0.7]]])).tolist()
        [[[False, True]]]
    """
    threshold = check_number("threshold", threshold, minimum=0.0, maximum=1.0)
    probs = _masks("probs", probs)
    check_float_tensor("probs", probs)
    check_finite("probs", probs)
    return probs > threshold


def segmentation_scores(preds: Tensor, target: Tensor) -> dict[str, Tensor]:
    r"""Per-image Dice and IoU of binary masks (torchmetrics), NaN where the truth is empty.

    .. math::
        \mathrm{Dice} = \frac{2|P \cap T|}{|P| + |T|}, \qquad \mathrm{IoU} = \frac{|P \cap T|}{|P \cup T|}

    An image whose true mask is empty has no foreground to find: both scores are NaN there and
    left out of the means (MONAI's ``DiceMetric(ignore_empty=True)`` convention).

    Args:
        preds: ``(N, H, W)`` (or ``(N, 1, H, W)``) bool or 0/1 predicted masks.
        target: The true masks, same shape.

    Returns:
        ``{"dice": (N,), "iou": (N,)}`` float64.

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
        if x.is_floating_point() and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(f"{name} must be binary masks (bool or 0/1); threshold probabilities with binarize()")
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
    out["images"] = float((~first.isnan()).sum())
    out["empty"] = float(first.isnan().sum())
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

    Examples:
        >>> import torch
        >>> t = torch.ones(3, 2, 2, dtype=torch.bool)
        >>> out = stratified_segmentation_metrics(t, t, torch.tensor([0, 1, 1]), ["Good", "Reject"])
        >>> list(out), out["Reject"]["images"]
        (['overall', 'Good', 'Reject'], 2.0)
    """
    scores = segmentation_scores(preds, target)
    if not isinstance(strata, Tensor) or strata.shape != (scores["dice"].shape[0],) or strata.is_floating_point():
        raise ValueError(
            f"strata must be ({scores['dice'].shape[0]},) integer ids, got {getattr(strata, 'shape', None)}"
        )
    strata = strata.cpu()
    if strata.numel() and (int(strata.min()) < 0 or int(strata.max()) >= len(names)):
        raise ValueError(f"strata ids must lie in [0, {len(names) - 1}] to name {list(names)}")
    out = {"overall": _summary(scores)}
    for index, name in enumerate(names):
        chosen = strata == index
        if bool(chosen.any()):
            out[name] = _summary({k: v[chosen] for k, v in scores.items()})
    return out
