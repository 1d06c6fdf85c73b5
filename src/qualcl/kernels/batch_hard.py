"""Batch-hard triplet mining with two streaming K = 1 reductions instead of an N×N distance matrix."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qualcl._validation import check_choice, check_embeddings, check_labels
from qualcl.kernels.topk import topk_similarity

__all__ = ["DISTANCES", "batch_hard_triplets", "check_distance"]

DISTANCES = ("cosine", "euclidean", "euclidean_raw")
"""The distances of the metric family: pytorch-metric-learning's ``CosineSimilarity()``,
``LpDistance()`` (Euclidean on L2-normalised embeddings) and ``LpDistance(normalize_embeddings=False)``."""


def check_distance(distance: Any) -> str:
    """``distance`` as one of :data:`DISTANCES` (``ValueError`` naming ``distance`` otherwise)."""
    return check_choice("distance", distance, DISTANCES)


def batch_hard_triplets(
    embeddings: Tensor,
    labels: Tensor,
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    distance: str = "cosine",
    normalize: bool = True,
    chunk_size: int | None = None,
    impl: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """For each anchor, its farthest positive and its nearest negative (batch-hard mining).

    Uses :func:`topk_similarity` with ``k = 1`` twice (same-label columns, least similar;
    other-label columns, most similar), so memory stays O((N + M)·D + chunk·M). Anchors without a
    positive or without a negative are left out. Returns pytorch-metric-learning's triplet tuple,
    so PML losses (e.g. ``TripletMarginLoss``) accept it as ``indices_tuple``.

    Distances, and the PML miner each one selects what it selects (ties: lowest column):

    * ``"cosine"``: ``BatchHardMiner(distance=CosineSimilarity())``;
    * ``"euclidean"``: ``BatchHardMiner(distance=LpDistance())`` (Euclidean distance of the
      L2-normalised embeddings, ``sqrt(2 − 2 cos)``: a decreasing function of the cosine, so the
      same triplets as ``"cosine"``);
    * ``"euclidean_raw"``: ``BatchHardMiner(distance=LpDistance(normalize_embeddings=False))``.
      Ranked by ``x·y − |y|²/2`` (the squared distance less the anchor's own ``|x|²``, halved and
      negated) without forming the ``(N, M)`` distance matrix; PML's ``torch.cdist`` rounds
      differently, so candidates whose distances tie to rounding may be ordered differently.

    Args:
        embeddings: ``(N, D)`` anchors (non-zero rows unless ``distance="euclidean_raw"``).
        labels: ``(N,)`` integer labels.
        ref_emb: ``(M, D)`` reference embeddings (default: ``embeddings``, an anchor never pairs
            with itself).
        ref_labels: ``(M,)`` labels of ``ref_emb`` (required with it).
        distance: ``"cosine"``, ``"euclidean"`` or ``"euclidean_raw"``.
        normalize: With ``distance="cosine"``: cosine similarity (True) or raw dot products
            (False, PML's ``DotProductSimilarity``); must stay True for the Euclidean distances.
        chunk_size: Rows per block of the torch path.
        impl: ``"auto"``, ``"triton"``, ``"torch"`` or ``"naive"`` (see :func:`topk_similarity`).

    Returns:
        ``(anchors, positives, negatives)``: int64 index tensors of equal length (positives and
        negatives index ``ref_emb``).

    Raises:
        ValueError: On mismatched shapes, non-finite inputs, ``ref_emb`` without ``ref_labels``,
            an unknown ``distance`` or ``normalize=False`` with a Euclidean distance.

    Examples:
        >>> import torch
        >>> emb, y = torch.randn(12, 8), torch.arange(12) % 3
        >>> a, p, n = batch_hard_triplets(emb, y)
        >>> a.shape == p.shape == n.shape
        True
        >>> a, p, n = batch_hard_triplets(emb, y, distance="euclidean_raw")
        >>> bool((y[a] == y[p]).all() and (y[a] != y[n]).all())
        True

    Reference:
        Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification", 2017.
    """
    distance = check_distance(distance)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    if not normalize and distance != "cosine":
        raise ValueError(
            f"normalize=False (raw dot products) is a similarity of distance='cosine' only, got distance={distance!r}"
        )
    raw = distance == "euclidean_raw"
    unit = normalize and not raw
    check_embeddings("embeddings", embeddings, nonzero=unit)
    n = embeddings.shape[0]
    row_labels = check_labels("labels", labels, n, embeddings.device)
    if (ref_emb is None) != (ref_labels is None):
        raise ValueError("ref_emb and ref_labels must be given together")
    exclude = None
    if ref_emb is None or ref_labels is None:
        reference, column_labels = embeddings, row_labels
        exclude = torch.arange(n, device=embeddings.device)
    else:
        check_embeddings("ref_emb", ref_emb, dim=embeddings.shape[1], nonzero=unit)
        reference = ref_emb
        column_labels = check_labels("ref_labels", ref_labels, ref_emb.shape[0], embeddings.device)
    query = embeddings
    if raw:  # x·y − |y|²/2 = [x, 1]·[y, −|y|²/2]: larger means nearer
        with torch.no_grad():
            query = torch.cat([embeddings.detach(), embeddings.new_ones(n, 1)], dim=1)
            ref = reference.detach()
            reference = torch.cat([ref, -0.5 * (ref * ref).sum(dim=1, keepdim=True)], dim=1)

    def hardest(relation: str, largest: bool) -> Tensor:
        _, index = topk_similarity(
            query,
            reference,
            1,
            labels=row_labels,
            candidate_labels=column_labels,
            label_relation=relation,
            exclude_index=exclude,
            largest=largest,
            normalize=unit,
            chunk_size=chunk_size,
            impl=impl,
        )
        return index[:, 0]

    positives, negatives = hardest("same", largest=False), hardest("different", largest=True)
    anchors = torch.nonzero((positives >= 0) & (negatives >= 0)).flatten()
    return anchors, positives[anchors], negatives[anchors]
