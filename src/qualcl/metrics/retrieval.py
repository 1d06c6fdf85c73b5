"""Retrieval metrics of ranked database rows: P@k, R@k, mAP@k, MRR, NDCG@k, mAP@R and FundusDR's variants."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, overload

import torch
from torch import Tensor

from qualcl._validation import (
    check_class_ids,
    check_finite,
    check_float_tensor,
    check_index,
    check_int,
    check_integer_tensor,
)
from qualcl.metrics.strata import stratify

__all__ = ["dr_graded_relevance", "map_at_r_columns", "retrieval_metrics", "stratified_retrieval_metrics"]


def dr_graded_relevance(num_grades: int = 5) -> Tensor:
    """``(G, G)`` graded relevance of ordinal DR grades, ``1 − |g_q − g_r| / (G − 1)``.

    A grade-1 result for a grade-2 query is a better miss than a grade-4 one; pass the table as
    ``graded_relevance`` of :func:`retrieval_metrics` to use it as the NDCG gain.

    Args:
        num_grades: Number of grades ``G >= 2`` (5 for the ICDR scale 0–4).

    Returns:
        ``(G, G)`` float64 table, 1 on the diagonal, 0 between the extreme grades, symmetric.

    Examples:
        >>> dr_graded_relevance(5)[2].tolist()
        [0.5, 0.75, 1.0, 0.75, 0.5]

    Reference:
        Järvelin and Kekäläinen, "Cumulated gain-based evaluation of IR techniques", ACM TOIS 20(4),
        2002 (graded relevance for DCG).
    """
    g = check_int("num_grades", num_grades, minimum=2)
    grades = torch.arange(g, dtype=torch.float64)
    return 1.0 - (grades.unsqueeze(1) - grades.unsqueeze(0)).abs() / (g - 1)


def _check_labels(query_labels: Tensor, database_labels: Tensor) -> tuple[Tensor, Tensor]:
    """Both label vectors as 1-D int64 CPU tensors; the database must not be empty."""
    out = []
    for name, value in (("query_labels", query_labels), ("database_labels", database_labels)):
        labels = check_integer_tensor(name, value, what="labels")
        if labels.ndim != 1:
            raise ValueError(f"{name} must have shape ({name[0].upper()},), got {tuple(labels.shape)}")
        out.append(labels.cpu())
    if out[1].numel() == 0:
        raise ValueError("database_labels is empty (shape (0,)): there is nothing to retrieve")
    return out[0], out[1]


def map_at_r_columns(query_labels: Tensor, database_labels: Tensor) -> int:
    """How many ranked columns ``map@r`` of :func:`retrieval_metrics` needs: ``max_q R_q`` (at least 1).

    ``R_q`` is the number of database items with the label of query ``q``; search that many
    neighbours (``RetrievalIndex.search(queries, k=map_at_r_columns(...))``) to get ``map@r``. In
    leave-one-out retrieval (``exclude_index`` of :func:`retrieval_metrics`) one column fewer suffices.

    Args:
        query_labels: ``(Q,)`` integer labels of the queries.
        database_labels: ``(N,)`` integer labels of the database.

    Returns:
        The largest ``R_q`` over the queries, or 1 when no query has a relevant item.

    Examples:
        >>> import torch
        >>> map_at_r_columns(torch.tensor([0, 1]), torch.tensor([0, 1, 1, 1, 2]))
        3

    Reference:
        Musgrave, Belongie and Lim, "A Metric Learning Reality Check", ECCV 2020 (MAP@R).
    """
    queries, database = _check_labels(query_labels, database_labels)
    if queries.numel() == 0:
        return 1
    _, inverse = torch.unique(torch.cat([database, queries]), return_inverse=True)
    counts = torch.bincount(inverse[: database.shape[0]], minlength=int(inverse.max()) + 1)
    return max(1, int(counts[inverse[database.shape[0] :]].max()))


def _check_distinct(ranked: Tensor) -> None:
    """Refuse a ``(Q, K)`` ranking that lists one database row twice in a query's row (``-1`` padding aside).

    A repeated row would be counted as two hits: recall above 1, precision of a single relevant item
    above ``1 / k``.
    """
    if ranked.shape[1] < 2:
        return
    ordered = torch.sort(ranked, dim=1).values
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if bool(repeated.any()):
        query = int(repeated.any(dim=1).nonzero()[0])
        row = int(ordered[query, 1:][repeated[query]][0])
        count = int((ranked[query] == row).sum())
        raise ValueError(
            f"ranked_indices must list each database row at most once per query, got row {row} {count} times "
            f"for query {query} (ranked_indices[{query}] = {ranked[query].tolist()[:20]})"
        )


def _per_query(
    query_labels: Tensor,
    database_labels: Tensor,
    ranked_indices: Tensor,
    k: int,
    graded_relevance: Tensor | None,
    exclude_index: Tensor | None,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Every metric per query (float64), the ``(Q,)`` int64 ``R_q`` and the ``(Q,)`` bool mask NDCG scores.

    Every metric is NaN where ``R_q = 0`` except ``ndcg@k``, which is NaN where the ideal DCG is 0
    (no database item gives the query any gain): with graded gains a query without an item of its
    own label still has an NDCG when other labels give it gain.
    """
    queries, database = _check_labels(query_labels, database_labels)
    q, n = queries.shape[0], database.shape[0]
    ranked = check_integer_tensor("ranked_indices", ranked_indices, what="database rows")
    if ranked.ndim != 2 or ranked.shape[0] != q:
        raise ValueError(
            f"ranked_indices must have shape (Q={q}, K) (one row of database rows per query), got {tuple(ranked.shape)}"
        )
    ranked = ranked.cpu()
    width = ranked.shape[1]
    k = check_int("k", k, minimum=1)
    if k > width:
        raise ValueError(
            f"k={k} exceeds the K={width} ranked columns of ranked_indices; rank at least k candidates "
            "per query (pad missing ranks with -1, which count as misses)"
        )
    if ranked.numel() and (int(ranked.min()) < -1 or int(ranked.max()) >= n):
        raise ValueError(
            f"ranked_indices must hold database rows in [-1, N={n}) (-1 = padding), got min "
            f"{int(ranked.min())}, max {int(ranked.max())}"
        )
    _check_distinct(ranked)

    if graded_relevance is None:
        # labels are only compared: map them to 0..C-1 so that any integer values work
        _, inverse = torch.unique(torch.cat([database, queries]), return_inverse=True)
        database_ids, query_ids = inverse[:n], inverse[n:]
        classes = int(inverse.max()) + 1
        table = None
    else:
        table = check_float_tensor("graded_relevance", graded_relevance)
        if table.ndim != 2 or table.shape[0] != table.shape[1] or table.shape[0] == 0:
            raise ValueError(f"graded_relevance must have shape (G, G), got {tuple(table.shape)}")
        check_finite("graded_relevance", table)
        table = table.detach().to(device="cpu", dtype=torch.float64)
        if bool((table < 0).any()):
            raise ValueError("graded_relevance must hold gains >= 0, got a negative entry")
        classes = table.shape[0]
        query_ids = check_class_ids("query_labels", queries, classes)
        database_ids = check_class_ids("database_labels", database, classes)

    counts = torch.bincount(database_ids, minlength=classes)
    relevant = counts[query_ids]  # R_q
    excluded = None  # label id of the row left out of each query's database, -1 for none
    if exclude_index is not None:
        if isinstance(exclude_index, Tensor):
            exclude_index = exclude_index.cpu()
        exclude_index = check_index("exclude_index", exclude_index, q, n, ranked.device)
        if bool(((ranked == exclude_index.unsqueeze(1)) & (ranked >= 0)).any()):
            raise ValueError("ranked_indices holds the row exclude_index leaves out of that query's database")
        excluded = torch.where(exclude_index >= 0, database_ids[exclude_index.clamp_min(0)], -1)
        relevant = relevant - (excluded == query_ids).long()
    rel_f = relevant.to(torch.float64)

    top = ranked[:, :k]
    valid = top >= 0
    labels = database_ids[top.clamp_min(0)]
    hit = (valid & (labels == query_ids.unsqueeze(1))).to(torch.float64)
    ranks = torch.arange(1, k + 1, dtype=torch.float64)
    hits = hit.sum(1)
    ap_sum = (hit * hit.cumsum(1) / ranks).sum(1)  # Σ_{r<=k} rel_r P@r
    has_hit = hits > 0
    first = hit.argmax(1).to(torch.float64) + 1.0  # first hit's rank (when there is one)

    discount = 1.0 / torch.log2(ranks + 1.0)
    if table is None:
        dcg = (hit * discount).sum(1)
        # ideal: the R_q relevant items first; Σ_{r <= min(k, R_q)} discount_r
        cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), discount.cumsum(0)])
        idcg = cumulative[relevant.clamp_max(k)]
    else:
        gains = torch.where(valid, table[query_ids.unsqueeze(1), labels], 0.0)
        dcg = (gains * discount).sum(1)
        # ideal for a class-c query: the database sorted by gain table[c, label]; class j fills
        # counts[j] ranks, so rank r gets the gain of the first sorted class whose cumulative count >= r
        sorted_gain, order = torch.sort(table, dim=1, descending=True, stable=True)
        filled = counts[order].cumsum(1)[query_ids]  # (Q, G)
        if excluded is not None:  # one item fewer of the excluded row's class, from its sorted position on
            position = (order[query_ids] == excluded.unsqueeze(1)).long().cumsum(1)
            filled = filled - position
        slot = torch.searchsorted(filled, ranks.to(torch.long).expand(q, k).contiguous())
        padded_gain = torch.cat([sorted_gain, torch.zeros(classes, 1, dtype=torch.float64)], 1)
        idcg = (padded_gain[query_ids].gather(1, slot) * discount).sum(1)

    # mAP@R: the first R_q ranks, divided by R_q; needs R_q ranked columns
    width_r = min(width, max(1, int(relevant.max()) if q else 1))
    head = ranked[:, :width_r]
    hit_r = ((head >= 0) & (database_ids[head.clamp_min(0)] == query_ids.unsqueeze(1))).to(torch.float64)
    ranks_r = torch.arange(1, width_r + 1, dtype=torch.float64)
    within = ranks_r.unsqueeze(0) <= rel_f.unsqueeze(1)
    ap_r = (hit_r * hit_r.cumsum(1) / ranks_r * within).sum(1) / rel_f.clamp_min(1.0)
    ap_r = torch.where(relevant <= width, ap_r, math.nan)

    out = {
        f"precision@{k}": hits / k,
        f"recall@{k}": hits / rel_f.clamp_min(1.0),
        f"map@{k}": torch.where(has_hit, ap_sum / hits.clamp_min(1.0), 0.0),
        f"map_min@{k}": ap_sum / rel_f.clamp(1.0, float(k)),
        "mrr": torch.where(has_hit, 1.0 / first, 0.0),
        f"ndcg@{k}": torch.where(idcg > 0, dcg / idcg.clamp_min(torch.finfo(torch.float64).tiny), 0.0),
        "precision@1": hit[:, 0],
        "map@r": ap_r,
        f"hit_rate@{k}": hits / k,
        f"map_legacy@{k}": ap_sum / k,
    }
    scored = relevant > 0
    ndcg_scored = idcg > 0
    values = {
        key: torch.where(ndcg_scored if key == f"ndcg@{k}" else scored, value, math.nan) for key, value in out.items()
    }
    return values, relevant, ndcg_scored


def _summary(values: dict[str, Tensor], relevant: Tensor, ndcg_scored: Tensor, keep: Tensor) -> dict[str, float]:
    """Means over the queries in ``keep`` with ``R_q > 0`` (NDCG: with an ideal DCG > 0), and the query counts."""
    scored = keep & (relevant > 0)
    out: dict[str, float] = {}
    for key, value in values.items():
        chosen = keep & ndcg_scored if key.startswith("ndcg@") else scored
        # a mean over nothing, or over a NaN (map@r short of columns), is NaN
        out[key] = float(value[chosen].mean()) if bool(chosen.any()) else math.nan
    out["queries"] = int(scored.sum())
    out["queries_without_relevant"] = int((keep & (relevant == 0)).sum())
    out["ndcg_queries"] = int((keep & ndcg_scored).sum())
    return out


@overload
def retrieval_metrics(
    query_labels: Tensor,
    database_labels: Tensor,
    ranked_indices: Tensor,
    k: int,
    *,
    graded_relevance: Tensor | None = ...,
    exclude_index: Tensor | None = ...,
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
    exclude_index: Tensor | None = ...,
    per_query: Literal[True],
) -> dict[str, Tensor]: ...


def retrieval_metrics(
    query_labels: Tensor,
    database_labels: Tensor,
    ranked_indices: Tensor,
    k: int,
    *,
    graded_relevance: Tensor | None = None,
    exclude_index: Tensor | None = None,
    per_query: bool = False,
) -> dict[str, float] | dict[str, Tensor]:
    r"""Standard retrieval metrics of ranked database rows, relevance = same label.

    For query ``q`` with label ``y_q``, ``R_q`` database items of that label, ranked rows
    ``j_1, j_2, …`` and ``rel_r = [y_{j_r} = y_q]`` (0 for padding), ``hits = Σ_{r≤k} rel_r`` and
    ``P@r = (Σ_{s≤r} rel_s) / r``:

    * ``precision@k`` = hits / k. It divides by ``k`` even when the database has fewer than ``k``
      items (the ranks beyond ``N`` are ``-1`` padding and misses) — torchmetrics'
      ``RetrievalPrecision(top_k=k)`` (``adaptive_k=False``).
    * ``recall@k`` = hits / ``R_q`` — ``RetrievalRecall(top_k=k)``.
    * ``map@k`` = :math:`\frac{1}{\text{hits}}\sum_{r\le k} rel_r\,P@r`, 0 without a hit: AP
      normalised by the relevant items *retrieved*. This is what torchmetrics'
      ``RetrievalMAP(top_k=k)`` computes (mean of ``P@r`` over the hit positions in the top ``k``).
    * ``map_min@k`` = :math:`\frac{1}{\min(k, R_q)}\sum_{r\le k} rel_r\,P@r`: AP normalised by the
      most hits possible (the ``apk`` of Hamner's ``ml_metrics`` and of Kaggle's MAP@k); ``<= map@k``.
    * ``mrr`` = 1 / rank of the first hit within the top ``k``, 0 if none — torchmetrics'
      ``RetrievalMRR(top_k=k)`` (without ``top_k`` torchmetrics looks down the whole ranking).
    * ``ndcg@k`` = DCG / IDCG with :math:`\mathrm{DCG}=\sum_{r\le k} g_r/\log_2(r+1)`, linear gain
      ``g_r = graded_relevance[y_q, y_{j_r}]`` (default ``rel_r``; 0 for padding) and IDCG the DCG
      of the best ranking of the whole database (its gains for ``q`` sorted) —
      torchmetrics' ``RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")`` with
      ``target`` = the gains, on every query: NDCG scores (and averages) the queries whose database
      gives them any gain (IDCG > 0), so with ``graded_relevance`` a query without an item of its
      own label is still scored when neighbouring labels give it gain (counted in ``ndcg_queries``);
      without it, these are exactly the queries with ``R_q > 0``.
    * ``precision@1`` = ``rel_1``.
    * ``map@r`` = :math:`\frac{1}{R_q}\sum_{r\le R_q} rel_r\,P@r` (pytorch-metric-learning's
      ``mean_average_precision_at_r``). It reads the first ``R_q`` columns of ``ranked_indices``, so
      it needs ``K >= R_q``: NaN for a query with fewer columns (and so a NaN mean). Rank
      :func:`map_at_r_columns` neighbours to have it for every query.
    * ``hit_rate@k`` and ``map_legacy@k``: the public FundusDR code's "HR@k" = hits / k (equal to
      ``precision@k``, kept as a named alias for comparison) and its "mAP@k" =
      :math:`\frac{1}{k}\sum_{r\le k} rel_r\,P@r` (divided by ``k``, not by the hits).
      ``hit_rate@k`` is *not* torchmetrics' ``RetrievalHitRate(top_k=k)``, which is
      ``[hits > 0]`` (1 when any of the top ``k`` is relevant); the two agree only at ``k = 1``
      (both ``precision@1``).

    Only the first ``k`` columns of ``ranked_indices`` are scored (``map@r`` aside). A row with fewer
    than ``k`` real candidates must be padded with ``-1`` to ``k`` columns; padded ranks count as
    misses. Each row must list a database row at most once (a repeated row would count as two
    hits). Queries with ``R_q = 0`` (no relevant item in the database) are left out of every mean
    but NDCG's (torchmetrics' ``empty_target_action="skip"``) and counted in
    ``queries_without_relevant``; ``queries`` counts the others. FundusDR's code averages over all
    queries instead.

    Args:
        query_labels: ``(Q,)`` integer labels of the queries (any values; class ids in ``[0, G)``
            with ``graded_relevance``).
        database_labels: ``(N,)`` integer labels of the database, ``N >= 1``.
        ranked_indices: ``(Q, K)`` integer database rows, most similar first, ``-1`` for padding
            (e.g. ``RetrievalIndex.search(...).indices``).
        k: Cut-off, ``1 <= k <= K``.
        graded_relevance: ``(G, G)`` non-negative NDCG gains ``[query label, database label]``
            (e.g. :func:`dr_graded_relevance`); the other metrics keep binary relevance.
        exclude_index: ``(Q,)`` database row left out of query ``q``'s database, ``-1`` for none:
            its own row in leave-one-out retrieval (the queries are the database; searched with
            ``RetrievalIndex.search(..., exclude_index=...)``). ``R_q`` and the ideal DCG then leave
            it out, as pytorch-metric-learning's ``ref_includes_query=True``; ``ranked_indices``
            must not hold it.
        per_query: Return ``(Q,)`` float64 tensors (NaN for queries with ``R_q = 0``; ``ndcg@k``: with
            IDCG = 0) instead of means.

    Returns:
        ``{"precision@k", "recall@k", "map@k", "map_min@k", "mrr", "ndcg@k", "precision@1", "map@r",
        "hit_rate@k", "map_legacy@k"}`` (``k`` written out) as means over the queries with
        ``R_q > 0`` (``ndcg@k``: with IDCG > 0), plus ``"queries"``, ``"queries_without_relevant"``
        and ``"ndcg_queries"``; with ``per_query`` the same metric keys, each a ``(Q,)`` tensor
        (NaN where the metric does not score the query).

    Raises:
        TypeError: A non-integer label or index tensor, a non-float ``graded_relevance``.
        ValueError: Shapes that do not fit, ``k > K``, rows outside ``[-1, N)``, a row listed twice
            for one query, labels outside ``[0, G)`` with ``graded_relevance``.

    Examples:
        >>> import torch
        >>> ranked = torch.tensor([[0, 2, 1], [1, 0, -1]])
        >>> m = retrieval_metrics(torch.tensor([0, 1]), torch.tensor([0, 1, 0]), ranked, 2)
        >>> m["precision@2"], m["map@2"], m["mrr"], m["map_legacy@2"], m["queries"]
        (0.75, 1.0, 1.0, 0.75, 2)

    Reference:
        Manning, Raghavan and Schütze, "Introduction to Information Retrieval", 2008, ch. 8;
        Järvelin and Kekäläinen, "Cumulated gain-based evaluation of IR techniques", 2002 (NDCG);
        Musgrave, Belongie and Lim, "A Metric Learning Reality Check", ECCV 2020 (MAP@R).
    """
    values, relevant, ndcg_scored = _per_query(
        query_labels, database_labels, ranked_indices, k, graded_relevance, exclude_index
    )
    if per_query:
        return values
    return _summary(values, relevant, ndcg_scored, torch.ones_like(relevant, dtype=torch.bool))


def stratified_retrieval_metrics(
    query_labels: Tensor,
    database_labels: Tensor,
    ranked_indices: Tensor,
    k: int,
    strata: Tensor,
    strata_names: Sequence[str],
    *,
    graded_relevance: Tensor | None = None,
    exclude_index: Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`retrieval_metrics` over all queries and over the queries of each stratum.

    Use it per query grade (``strata = query_labels``) and per query quality level. Each stratum's
    means are over its queries with a relevant item, so the overall mean is the
    ``queries``-weighted mean of the strata means. Every entry has ``n`` (its queries); an empty
    stratum has ``n`` 0 and NaN metrics (the rule of :func:`~qualcl.metrics.stratify`).

    Args:
        query_labels: ``(Q,)`` integer labels of the queries.
        database_labels: ``(N,)`` integer labels of the database.
        ranked_indices: ``(Q, K)`` database rows, most similar first, ``-1`` for padding.
        k: Cut-off, ``1 <= k <= K``.
        strata: ``(Q,)`` stratum id of each query, indexing ``strata_names``.
        strata_names: Distinct names of the strata (not ``"overall"``).
        graded_relevance: ``(G, G)`` NDCG gains, as in :func:`retrieval_metrics`.
        exclude_index: ``(Q,)`` row left out of each query's database, as in :func:`retrieval_metrics`.

    Returns:
        ``{"overall": {...}, name: {...} for each stratum}``, each as :func:`retrieval_metrics`
        returns (with ``queries``, ``queries_without_relevant`` and ``ndcg_queries``).

    Examples:
        >>> import torch
        >>> ranked = torch.tensor([[0, 2], [1, 0]])
        >>> out = stratified_retrieval_metrics(
        ...     torch.tensor([0, 1]), torch.tensor([0, 1, 0]), ranked, 2, torch.tensor([0, 1]), ["Good", "Reject"]
        ... )
        >>> out["Good"]["precision@2"], out["Reject"]["precision@2"], out["overall"]["queries"]
        (1.0, 0.5, 2)

    Reference:
        Manning, Raghavan and Schütze, "Introduction to Information Retrieval", 2008, ch. 8.
    """
    names = list(strata_names)
    if not names or len(set(names)) != len(names) or "overall" in names:
        raise ValueError(f"strata_names must be distinct names other than 'overall', got {names}")
    values, relevant, ndcg_scored = _per_query(
        query_labels, database_labels, ranked_indices, k, graded_relevance, exclude_index
    )
    strata = check_class_ids("strata", strata, len(names), n=relevant.shape[0]).cpu()
    return stratify(lambda keep: _summary(values, relevant, ndcg_scored, keep), strata, names)
