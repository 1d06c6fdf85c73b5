"""Naive float64 loop references of the kernels (clarity, not speed)."""

from __future__ import annotations

import math

from torch import Tensor


def _vectors(x: Tensor, normalize: bool) -> list[list[float]]:
    rows = x.double().tolist()
    if not normalize:
        return rows
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def info_nce(
    query: Tensor,
    candidates: Tensor,
    *,
    tau: float,
    positive: Tensor | None = None,
    positive_index: Tensor | None = None,
    labels: Tensor | None = None,
    candidate_labels: Tensor | None = None,
    positive_mask: Tensor | None = None,
    exclude_index: Tensor | None = None,
    negative_mask: Tensor | None = None,
    top_k: int | None = None,
    weights: Tensor | None = None,
    reduction: str = "mean",
    normalize: bool = True,
) -> float | list[float]:
    """Multi-positive InfoNCE, row by row: log-sum-exp over positives + kept negatives minus mean positive.

    A row without a positive or without a negative has loss 0 and leaves the mean.
    """
    q, c = _vectors(query, normalize), _vectors(candidates, normalize)
    p = None if positive is None else _vectors(positive, normalize)
    losses: list[float] = []
    counted: list[float] = []
    for i in range(len(q)):
        logits = [_dot(q[i], c[j]) / tau for j in range(len(c))]
        excluded = None if exclude_index is None else int(exclude_index[i])
        positives, negatives = [], []
        for j in range(len(c)):
            if j == excluded:
                continue
            is_pos = (positive_index is not None and int(positive_index[i]) == j) or (
                labels is not None and int(labels[i]) == int(candidate_labels[j])
            )
            is_pos = is_pos or (positive_mask is not None and bool(positive_mask[i, j]))
            if is_pos:
                positives.append(j)
            elif negative_mask is None or bool(negative_mask[i, j]):
                negatives.append(j)
        if top_k is not None and len(negatives) > top_k:
            kth = sorted((logits[j] for j in negatives), reverse=True)[top_k - 1]
            negatives = [j for j in negatives if logits[j] >= kth]
        positive_logits = [logits[j] for j in positives]
        if p is not None:
            positive_logits.append(_dot(q[i], p[i]) / tau)
        if not positive_logits or not negatives:
            losses.append(0.0)
            counted.append(0.0)
            continue
        counted.append(1.0)
        terms = [logits[j] for j in positives + negatives] + ([positive_logits[-1]] if p is not None else [])
        losses.append(_logsumexp(terms) - sum(positive_logits) / len(positive_logits))
    w = [1.0] * len(losses) if weights is None else weights.double().tolist()
    weighted = [li * wi for li, wi in zip(losses, w, strict=True)]
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return sum(weighted)
    kept = [wi * ci for wi, ci in zip(w, counted, strict=True)]
    return sum(weighted) / sum(kept) if sum(kept) > 0 else 0.0


def topk(
    query: Tensor,
    candidates: Tensor,
    k: int,
    *,
    keep: Tensor | None = None,
    largest: bool = True,
    normalize: bool = True,
) -> tuple[list[list[float]], list[list[int]]]:
    """Per-row top-k by (value, then lower column), padded with (-inf or +inf, -1)."""
    q, c = _vectors(query, normalize), _vectors(candidates, normalize)
    values, indices = [], []
    pad = float("-inf") if largest else float("inf")
    for i in range(len(q)):
        kept = [(_dot(q[i], c[j]), j) for j in range(len(c)) if keep is None or bool(keep[i, j])]
        kept.sort(key=lambda vj: (-vj[0] if largest else vj[0], vj[1]))
        kept = kept[:k] + [(pad, -1)] * max(0, k - len(kept))
        values.append([v for v, _ in kept])
        indices.append([j for _, j in kept])
    return values, indices
