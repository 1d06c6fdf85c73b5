"""Thin adapters over torchmetrics: grading metrics overall and per quality stratum."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_cohen_kappa,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

__all__ = ["confusion_matrix", "grading_metrics", "quadratic_weighted_kappa", "stratified_grading_metrics"]


def _check(preds: Tensor, target: Tensor) -> None:
    if preds.shape != target.shape or preds.ndim != 1:
        raise ValueError(
            f"preds and target must be (N,) class ids of equal length, got {tuple(preds.shape)} "
            f"and {tuple(target.shape)}"
        )


def quadratic_weighted_kappa(preds: Tensor, target: Tensor, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights (the DR-grading standard; = sklearn's ``weights="quadratic"``).

    Args:
        preds: ``(N,)`` predicted class ids.
        target: ``(N,)`` true class ids.
        num_classes: Number of grades ``C``.

    Returns:
        Kappa in ``[-1, 1]``; ``nan`` when undefined (a single class in both).

    Example:
        >>> import torch
        >>> quadratic_weighted_kappa(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), 3)
        1.0
    """
    _check(preds, target)
    if preds.numel() == 0:
        return float("nan")
    value = multiclass_cohen_kappa(preds, target, num_classes, weights="quadratic")
    return float(value)


def grading_metrics(preds: Tensor, target: Tensor, num_classes: int) -> dict[str, float]:
    """QWK, accuracy and macro F1 (over the classes present) of class predictions.

    Args:
        preds: ``(N,)`` predicted class ids.
        target: ``(N,)`` true class ids.
        num_classes: Number of classes.

    Returns:
        ``{"qwk", "accuracy", "macro_f1", "n"}``.

    Example:
        >>> import torch
        >>> grading_metrics(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), 3)["accuracy"]
        0.6666666865348816
    """
    _check(preds, target)
    n = int(preds.numel())
    if n == 0:
        return {"qwk": float("nan"), "accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
    return {
        "qwk": quadratic_weighted_kappa(preds, target, num_classes),
        "accuracy": float(multiclass_accuracy(preds, target, num_classes, average="micro")),
        "macro_f1": float(multiclass_f1_score(preds, target, num_classes, average="macro")),
        "n": n,
    }


def stratified_grading_metrics(
    preds: Tensor,
    target: Tensor,
    num_classes: int,
    strata: Tensor,
    strata_names: Sequence[str],
) -> dict[str, dict[str, float]]:
    """:func:`grading_metrics` overall and within each stratum (e.g. image-quality level).

    Args:
        preds: ``(N,)`` predicted class ids.
        target: ``(N,)`` true class ids.
        num_classes: Number of classes.
        strata: ``(N,)`` stratum id of each sample, indexing ``strata_names``.
        strata_names: Name of each stratum id.

    Returns:
        ``{"overall": {...}, name: {...} for each stratum}``.

    Example:
        >>> import torch
        >>> out = stratified_grading_metrics(torch.tensor([0, 1]), torch.tensor([0, 0]), 2,
        ...                                  torch.tensor([0, 1]), ["Good", "Reject"])
        >>> out["Good"]["accuracy"], out["Reject"]["accuracy"]
        (1.0, 0.0)
    """
    _check(preds, target)
    if strata.shape != preds.shape:
        raise ValueError(f"strata must have shape {tuple(preds.shape)}, got {tuple(strata.shape)}")
    out = {"overall": grading_metrics(preds, target, num_classes)}
    for index, name in enumerate(strata_names):
        keep = strata == index
        out[name] = grading_metrics(preds[keep], target[keep], num_classes)
    return out


def confusion_matrix(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(C, C)`` counts, rows = true class, columns = predicted class."""
    _check(preds, target)
    return multiclass_confusion_matrix(preds, target, num_classes).to(torch.long)
