"""Batch-hard triplet mining with two streaming K = 1 reductions instead of an N×N distance matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from qualcl._validation import check_embeddings, check_labels
from qualcl.kernels.topk import topk_similarity

__all__ = ["batch_hard_triplets"]


def batch_hard_triplets(
    embeddings: Tensor,
    labels: Tensor,
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    normalize: bool = True,
    chunk_size: int | None = None,
    impl: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """For each anchor, its least similar positive and its most similar negative (batch-hard mining).

    Uses :func:`topk_similarity` with ``k = 1`` twice (same-label columns, smallest similarity;
    other-label columns, largest), so memory stays O((N + M)·D + chunk·M). Anchors without a
    positive or without a negative are left out. Returns pytorch-metric-learning's triplet tuple,
    so PML losses (e.g. ``TripletMarginLoss``) accept it as ``indices_tuple``; with cosine
    similarity it selects what PML's ``BatchHardMiner`` selects (ties: lowest column).

    Args:
        embeddings: ``(N, D)`` anchors.
        labels: ``(N,)`` integer labels.
        ref_emb: ``(M, D)`` reference embeddings (default: ``embeddings``, an anchor never pairs
            with itself).
        ref_labels: ``(M,)`` labels of ``ref_emb`` (required with it).
        normalize: Cosine similarity (True) or dot products.
        chunk_size: Rows per block of the torch path.
        impl: ``"auto"``, ``"triton"``, ``"torch"`` or ``"naive"`` (see :func:`topk_similarity`).

    Returns:
        ``(anchors, positives, negatives)``: int64 index tensors of equal length (positives and
        negatives index ``ref_emb``).

    Raises:
        ValueError: On mismatched shapes, non-finite inputs, or ``ref_emb`` without ``ref_labels``.

    Examples:
        >>> import torch
        >>> emb, y = torch.randn(12, 8), torch.arange(12) % 3
        >>> a, p, n = batch_hard_triplets(emb, y)
        >>> a.shape == p.shape == n.shape
        True

    Reference:
        Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification", 2017.
    """
    check_embeddings("embeddings", embeddings, nonzero=normalize)
    n = embeddings.shape[0]
    row_labels = check_labels("labels", labels, n, embeddings.device)
    if (ref_emb is None) != (ref_labels is None):
        raise ValueError("ref_emb and ref_labels must be given together")
    exclude = None
    if ref_emb is None or ref_labels is None:
        reference, column_labels = embeddings, row_labels
        exclude = torch.arange(n, device=embeddings.device)
    else:
        check_embeddings("ref_emb", ref_emb, dim=embeddings.shape[1], nonzero=normalize)
        reference = ref_emb
        column_labels = check_labels("ref_labels", ref_labels, ref_emb.shape[0], embeddings.device)

    def hardest(relation: str, largest: bool) -> Tensor:
        _, index = topk_similarity(
            embeddings,
            reference,
            1,
            labels=row_labels,
            candidate_labels=column_labels,
            label_relation=relation,
            exclude_index=exclude,
            largest=largest,
            normalize=normalize,
            chunk_size=chunk_size,
            impl=impl,
        )
        return index[:, 0]

    positives, negatives = hardest("same", largest=False), hardest("different", largest=True)
    anchors = torch.nonzero((positives >= 0) & (negatives >= 0)).flatten()
    return anchors, positives[anchors], negatives[anchors]
