"""Retrieval metrics from ranked database indices: P@k, R@k, mAP@k, MRR, NDCG@k, mAP@R, the FundusDR variants."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, overload

import torch
from torch import Tensor

from qualcl._validation import check_int

__all__ = ["dr_graded_relevance", "retrieval_metrics", "stratified_retrieval_metrics"]


def dr_graded_relevance(num_grades: int = 5) -> Tensor:
    """``(G, G)`` graded relevance of DR grades: ``1 − |g_q − g_r| / (G − 1)``.

    A grade-1 result for a grade-2 query is a better miss than a grade-4 one; NDCG@k uses this as
    the gain.

    Example:
        >>> dr_graded_relevance(5)[2].tolist()
        [0.5, 0.75, 1.0, 0.75, 0.5]
    """
    g = check_int("num_grades", num_grades, minimum=2)
    grades = torch.arange(g, dtype=torch.float64)
    return 1.0 - (grades.unsqueeze(1) - grades.unsqueeze(0)).abs() / (g - 1)


def _check(
    query_labels: Tensor, database_labels: Tensor, ranked_indices: Tensor, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    for name, value in (("query_labels", query_labels), ("database_labels", database_labels)):
        if not isinstance(value, Tensor) or value.ndim != 1 or value.is_floating_point() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor, got {getattr(value, 'dtype', type(value))}")
        if value.numel() and int(value.min()) < 0:
            raise ValueError(f"{name} must be non-negative class ids")
    if database_labels.numel() == 0:
        raise ValueError("database_labels is empty: there is nothing to retrieve")
    if not isinstance(ranked_indices, Tensor) or ranked_indices.ndim != 2 or ranked_indices.is_floating_point():
        raise ValueError("ranked_indices must be a (Q, K) integer tensor of database rows (-1 for padding)")
    q = query_labels.shape[0]
    if ranked_indices.shape[0] != q:
        raise ValueError(f"ranked_indices has {ranked_indices.shape[0]} rows for {q} queries")
    k = check_int("k", k)
    if ranked_indices.shape[1] < k:
        raise ValueError(f"k={k} needs at least {k} ranked columns, got {ranked_indices.shape[1]} (pad with -1)")
    n = database_labels.shape[0]
    ranked = ranked_indices.long().cpu()
    if ranked.numel() and (int(ranked.min()) < -1 or int(ranked.max()) >= n):
        raise ValueError(f"ranked_indices must lie in [-1, {n}) (database rows, -1 for padding)")
    return query_labels.long().cpu(), database_labels.long().cpu(), ranked


def _per_query(
    query_labels: Tensor,
    database_labels: Tensor,
    ranked_indices: Tensor,
    k: int,
    graded_relevance: Tensor | None,
) -> dict[str, Tensor]:
    """Every metric per query, float64, NaN for queries without a relevant database item."""
    queries, database, ranked = _check(query_labels, database_labels, ranked_indices, k)
    classes = int(max(int(queries.max()) if queries.numel() else 0, int(database.max()))) + 1
    counts = torch.bincount(database, minlength=classes).to(torch.float64)
    relevant = counts[queries]  # R_q
    valid = ranked >= 0
    labels = torch.where(valid, database[ranked.clamp_min(0)], torch.full_like(ranked, -1))
    hit = (labels == queries.unsqueeze(1)) & valid
    hit_k = hit[:, :k].to(torch.float64)
    ranks = torch.arange(1, k + 1, dtype=torch.float64)
    precision_at = hit_k.cumsum(1) / ranks
    hits = hit_k.sum(1)
    ap_sum = (hit_k * precision_at).sum(1)
    first = torch.where(hit_k.any(1), hit_k.argmax(1).to(torch.float64) + 1, torch.full_like(hits, math.inf))

    if graded_relevance is None:
        gains_table = torch.eye(classes, dtype=torch.float64)
    else:
        table = torch.as_tensor(graded_relevance, dtype=torch.float64).cpu()
        if table.ndim != 2 or table.shape[0] < classes or table.shape[1] < classes:
            raise ValueError(f"graded_relevance must be at least ({classes}, {classes}), got {tuple(table.shape)}")
        gains_table = table[:classes, :classes]
    discount = 1.0 / torch.log2(ranks + 1.0)
    gains = torch.where(valid[:, :k], gains_table[queries.unsqueeze(1), labels[:, :k].clamp_min(0)], 0.0)
    dcg = (gains * discount).sum(1)
    ideal = torch.zeros(classes, dtype=torch.float64)
    for c in range(classes):  # ideal ranking: the database sorted by its gain for a class-c query
        best = torch.sort(gains_table[c][database], descending=True).values[:k]
        ideal[c] = (best * discount[: best.shape[0]]).sum()
    idcg = ideal[queries]

    # mAP@R (PML's mean_average_precision_at_r): the first R_q ranks; needs R_q ranked columns
    width = ranked.shape[1]
    r_ranks = torch.arange(1, width + 1, dtype=torch.float64)
    hit_all = hit.to(torch.float64)
    within_r = r_ranks.unsqueeze(0) <= relevant.unsqueeze(1)
    ap_r = (hit_all * hit_all.cumsum(1) / r_ranks * within_r).sum(1) / relevant.clamp_min(1)
    ap_r = torch.where(relevant <= width, ap_r, torch.full_like(ap_r, math.nan))

    nan = torch.full_like(hits, math.nan)
    has = relevant > 0
    out = {
        f"precision@{k}": hits / k,
        f"recall@{k}": hits / relevant.clamp_min(1),
        f"map@{k}": torch.where(hits > 0, ap_sum / hits.clamp_min(1), 0.0),
        f"map_min@{k}": ap_sum / torch.minimum(relevant, torch.tensor(float(k))).clamp_min(1),
        "mrr": torch.where(torch.isfinite(first), 1.0 / first, 0.0),
        f"ndcg@{k}": torch.where(idcg > 0, dcg / idcg.clamp_min(1e-300), 0.0),
        "precision@1": hit_k[:, 0],
        "map@r": ap_r,
        f"hit_rate@{k}": hits / k,
        f"map_legacy@{k}": ap_sum / k,
    }
    return {key: torch.where(has, value, nan) for key, value in out.items()}


def _summary(per_query: dict[str, Tensor], keep: Tensor) -> dict[str, float]:
    """Means over the queries in ``keep`` that have a relevant item; counts of both kinds."""
    any_key = next(iter(per_query))
    scored = keep & ~torch.isnan(per_query[any_key])
    out: dict[str, float] = {}
    for key, value in per_query.items():
        chosen = value[scored]
        out[key] = float(chosen.mean()) if chosen.numel() and not bool(torch.isnan(chosen).any()) else math.nan
    out["queries"] = float(int(scored.sum()))
    out["queries_without_relevant"] = float(int((keep & ~scored).sum()))
    return out


@overload
def retrieval_metrics(
    query_labels: Tensor,
    database_labels: Tensor,
    ranked_indices: Tensor,
    k: int,
    *,
    graded_relevance: Tensor | None = ...,
    per_query: Literal[False] = ...,
) -> dict[str, float]: ...


@overload
def retrieval_metrics(
    query_labels: Tensor,
    database_labels: Tensor,
    ranked_indices: Tensor,
    k: int,
    *,
    graded_relevance: Tensor | None = ...,
    per_query: Literal[True],
) -> dict[str, Tensor]: ...


def retrieval_metrics(
    query_labels: Tensor,
    database_labels: Tensor,
    ranked_indices: Tensor,
    k: int,
    *,
    graded_relevance: Tensor | None = None,
    per_query: bool = False,
) -> dict[str, float] | dict[str, Tensor]:
    r"""Standard retrieval metrics of ranked results; relevance = same label.

    For a query with ``R`` relevant database items and hits ``rel_1 … rel_k`` in its top ``k``
    (``P@r`` the precision of the first ``r``):

    * ``precision@k`` = hits / k (padding ``-1`` counts as a miss, so a database smaller than
      ``k`` caps it below 1); ``recall@k`` = hits / R;
    * ``map@k`` = :math:`\frac{1}{\text{hits}} \sum_{r \le k} rel_r P@r` (0 without a hit) —
      torchmetrics' ``RetrievalMAP(top_k=k)``; ``map_min@k`` divides by ``min(k, R)`` instead
      (the "AP@k" of many retrieval papers);
    * ``mrr`` = 1 / rank of the first hit within the top ``k`` (0 if none; torchmetrics'
      ``RetrievalMRR(top_k=k)``);
    * ``ndcg@k`` = DCG / ideal DCG with gain ``graded_relevance[label_q, label_r]`` (default 1 for
      the same label, else 0) and discount ``1 / log2(r + 1)``; the ideal ranks the whole database
      by gain (torchmetrics' ``RetrievalNormalizedDCG(top_k=k)`` with those gains);
    * ``precision@1``, and ``map@r`` = :math:`\frac{1}{R}\sum_{r \le R} rel_r P@r` over the first
      ``R`` ranks (pytorch-metric-learning's ``mean_average_precision_at_r``): it needs at least
      ``R`` ranked columns for every query, else NaN;
    * the public FundusDR code's ``hit_rate@k`` (its HR@k = hits / k, equal to ``precision@k``)
      and ``map_legacy@k`` = :math:`\frac{1}{k}\sum_{r \le k} rel_r P@r` (its "mAP@k" divides by k).

    Queries without any relevant database item are left out of the means and counted in
    ``queries_without_relevant``; ``queries`` counts the rest.

    Args:
        query_labels: ``(Q,)`` integer labels of the queries.
        database_labels: ``(N,)`` integer labels of the database.
        ranked_indices: ``(Q, K)`` database rows, most similar first, ``-1`` for padding; the
            first ``k`` columns are scored (``map@r`` uses all of them).
        k: Cut-off, ``1 <= k <= K``.
        graded_relevance: ``(C, C)`` gains for NDCG (e.g. :func:`dr_graded_relevance`).
        per_query: Return ``(Q,)`` float64 tensors (NaN for queries without a relevant item)
            instead of means.

    Returns:
        ``{metric: mean}`` with ``queries`` and ``queries_without_relevant``, or per-query tensors.

    Raises:
        ValueError: On shapes, dtypes or index ranges that do not fit (named).

    Example:
        >>> import torch
        >>> ranked = torch.tensor([[0, 2, 1], [1, 0, -1]])
        >>> m = retrieval_metrics(torch.tensor([0, 1]), torch.tensor([0, 1, 0]), ranked, 2)
        >>> m["precision@2"], m["map@2"], m["mrr"], m["queries"]
        (0.75, 1.0, 1.0, 2.0)

    Reference:
        Manning, Raghavan and Schütze, "Introduction to Information Retrieval", 2008, ch. 8;
        Musgrave et al., "A Metric Learning Reality Check", ECCV 2020 (mAP@R).
    """
    values = _per_query(query_labels, database_labels, ranked_indices, k, graded_relevance)
    if per_query:
        return values
    return _summary(values, torch.ones(query_labels.shape[0], dtype=torch.bool))


def stratified_retrieval_metrics(
    query_labels: Tensor,
    database_labels: Tensor,
    ranked_indices: Tensor,
    k: int,
    strata: Tensor,
    strata_names: Sequence[str],
    *,
    graded_relevance: Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`retrieval_metrics` over all queries and over the queries of each stratum.

    Use it per query grade (``strata = query_labels``) and per query quality level. An empty
    stratum gets NaN metrics and ``queries`` 0.

    Args:
        query_labels: ``(Q,)`` labels.
        database_labels: ``(N,)`` labels.
        ranked_indices: ``(Q, K)`` ranked database rows.
        k: Cut-off.
        strata: ``(Q,)`` stratum index of each query.
        strata_names: Name of each stratum index.
        graded_relevance: Gains for NDCG.

    Returns:
        ``{"overall": {...}, name: {...}}``.

    Example:
        >>> import torch
        >>> ranked = torch.tensor([[0, 2], [1, 0]])
        >>> out = stratified_retrieval_metrics(
        ...     torch.tensor([0, 1]), torch.tensor([0, 1, 0]), ranked, 2, torch.tensor([0, 1]), ["Good", "Reject"]
        ... )
        >>> out["Good"]["precision@2"], out["Reject"]["precision@2"]
        (1.0, 0.5)
    """
    values = _per_query(query_labels, database_labels, ranked_indices, k, graded_relevance)
    strata = torch.as_tensor(strata).long().cpu()
    if strata.shape != query_labels.shape:
        raise ValueError(f"strata must be ({query_labels.shape[0]},), got {tuple(strata.shape)}")
    if strata.numel() and (int(strata.min()) < 0 or int(strata.max()) >= len(strata_names)):
        raise ValueError(f"strata must index strata_names ({len(strata_names)} names)")
    out = {"overall": _summary(values, torch.ones_like(strata, dtype=torch.bool))}
    for index, name in enumerate(strata_names):
        out[name] = _summary(values, strata == index)
    return out
