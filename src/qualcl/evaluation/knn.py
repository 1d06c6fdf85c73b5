"""Weighted k-nearest-neighbour classification of frozen features (the kNN monitor of InstDisc and DINO)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from qualcl._validation import (
    check_choice,
    check_class_ids,
    check_features,
    check_int,
    check_integer_tensor,
    check_positive,
)
from qualcl.evaluation.retrieval import RetrievalIndex

__all__ = ["KNNResult", "knn_predict"]


class KNNResult(NamedTuple):
    """Predictions of :func:`knn_predict`.

    Attributes:
        predictions: ``(Q,)`` class ids (ties go to the lower class).
        scores: ``(Q, C)`` summed neighbour weights per class.
    """

    predictions: Tensor
    scores: Tensor


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    weighting: Literal["softmax", "uniform"] = "softmax",
    chunk_size: int = 65_536,
) -> KNNResult:
    r"""Classify each test feature by its ``k`` most cosine-similar training features.

    .. math::
        \text{score}_c(x) = \sum_{j \in \mathrm{top}_k(x)} w_j\, [y_j = c], \qquad
        w_j = e^{s(x, x_j)/\tau} \ (\text{softmax}) \ \text{or}\ 1 \ (\text{uniform})

    The neighbours come from an exact :class:`RetrievalIndex` (streamed, never the full ``Q × N``
    matrix). Softmax scores are returned multiplied by ``e^{-1/τ}`` (the weights are computed as
    ``e^{(s - 1)/τ}``, which cannot overflow for cosines); the predictions are unaffected.

    Args:
        train_features: ``(N, D)``.
        train_labels: ``(N,)`` class ids.
        test_features: ``(Q, D)``.
        k: Neighbours, ``1 <= k <= N`` (InstDisc / DINO: 20 or 200).
        temperature: ``tau`` of the softmax weights.
        num_classes: ``C`` (default ``max(train_labels) + 1``).
        weighting: ``"softmax"`` or ``"uniform"`` (majority vote).
        chunk_size: Training rows per search chunk.

    Returns:
        A :class:`KNNResult`.

    Examples:
        >>> import torch
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> knn_predict(train, torch.tensor([0, 0, 1]), torch.tensor([[0.2, 1.0]]), k=1).predictions.tolist()
        [1]

    Reference:
        Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR
        2018; Caron et al., DINO, ICCV 2021 (weighted kNN evaluation).
    """
    check_features("train_features", train_features)
    check_choice("weighting", weighting, ("softmax", "uniform"))
    check_positive("temperature", temperature)
    labels = check_integer_tensor("train_labels", train_labels, shape=(train_features.shape[0],), what="class ids")
    classes = max(int(labels.max()) + 1, 1) if num_classes is None else check_int("num_classes", num_classes)
    check_class_ids("train_labels", labels, classes)
    hits = RetrievalIndex(train_features, labels, chunk_size=chunk_size).search(test_features, k)
    assert hits.labels is not None
    if weighting == "softmax":
        weights = torch.exp((hits.similarities - 1.0) / temperature)  # shifted by the largest cosine: no overflow
    else:
        weights = torch.ones_like(hits.similarities)
    valid = hits.indices >= 0
    weights = torch.where(valid, weights, torch.zeros_like(weights))
    scores = torch.zeros(test_features.shape[0], classes, dtype=weights.dtype, device=weights.device)
    scores.scatter_add_(1, hits.labels.clamp_min(0), weights)
    return KNNResult(scores.argmax(dim=1), scores)
