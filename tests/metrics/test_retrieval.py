"""Retrieval metrics against explicit loops, torchmetrics and pytorch-metric-learning's AccuracyCalculator."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.retrieval import (
    RetrievalMAP,
    RetrievalMRR,
    RetrievalNormalizedDCG,
    RetrievalPrecision,
    RetrievalRecall,
)

from qualcl.evaluation import RetrievalIndex
from qualcl.metrics import (
    dr_graded_relevance,
    map_at_r_columns,
    retrieval_metrics,
    stratified_retrieval_metrics,
)

KEYS = ("precision@{k}", "recall@{k}", "map@{k}", "map_min@{k}", "mrr", "ndcg@{k}", "precision@1", "map@r")
KEYS += ("hit_rate@{k}", "map_legacy@{k}")


def _loop(q_labels, db_labels, ranked, k, gains=None, exclude=None):
    """Every metric of every query with explicit Python loops in float64; None for a query with R_q = 0.

    ``exclude[q]``: a database row that is not part of query ``q``'s database (-1: none).
    """
    db = db_labels.tolist()
    width = ranked.shape[1]
    rows = []
    for qi, label in enumerate(q_labels.tolist()):
        own = [j for j in range(len(db)) if exclude is None or j != int(exclude[qi])]
        relevant = sum(1 for j in own if db[j] == label)
        if relevant == 0:
            rows.append(None)
            continue
        row = [int(j) for j in ranked[qi].tolist()]

        def rel(j, label=label):
            return 1.0 if j >= 0 and db[j] == label else 0.0

        def gain(j, label=label):
            if j < 0:
                return 0.0
            return float(gains[label][db[j]]) if gains is not None else rel(j)

        hits, ap, first, dcg = 0.0, 0.0, 0.0, 0.0
        for r in range(1, k + 1):
            j = row[r - 1]
            if rel(j):
                hits += 1
                ap += hits / r
                if first == 0.0:
                    first = 1.0 / r
            dcg += gain(j) / math.log2(r + 1)
        ideal = sorted((gain(j) for j in own), reverse=True)
        idcg = 0.0
        for r in range(1, min(k, len(ideal)) + 1):
            idcg += ideal[r - 1] / math.log2(r + 1)
        if relevant <= width:
            h, ap_r = 0.0, 0.0
            for r in range(1, relevant + 1):
                if rel(row[r - 1]):
                    h += 1
                    ap_r += h / r
            ap_r /= relevant
        else:
            ap_r = math.nan
        rows.append(
            {
                f"precision@{k}": hits / k,
                f"recall@{k}": hits / relevant,
                f"map@{k}": ap / hits if hits else 0.0,
                f"map_min@{k}": ap / min(k, relevant),
                "mrr": first,
                f"ndcg@{k}": dcg / idcg if idcg > 0 else 0.0,
                "precision@1": rel(row[0]),
                "map@r": ap_r,
                f"hit_rate@{k}": hits / k,
                f"map_legacy@{k}": ap / k,
            }
        )
    return rows


def _loop_ndcg(q_labels, db_labels, ranked, k, gains=None, exclude=None):
    """NDCG@k of every query with loops, None where the ideal DCG is 0 (torchmetrics skips those).

    Unlike the other metrics, a query without an item of its own label is scored when other labels
    give it gain (graded relevance).
    """
    db = db_labels.tolist()
    out = []
    for qi, label in enumerate(q_labels.tolist()):
        own = [j for j in range(len(db)) if exclude is None or j != int(exclude[qi])]

        def gain(j, label=label):
            if j < 0:
                return 0.0
            return float(gains[label][db[j]]) if gains is not None else float(db[j] == label)

        row = [int(j) for j in ranked[qi].tolist()]
        dcg = sum(gain(row[r - 1]) / math.log2(r + 1) for r in range(1, k + 1))
        ideal = sorted((gain(j) for j in own), reverse=True)
        idcg = sum(ideal[r - 1] / math.log2(r + 1) for r in range(1, min(k, len(ideal)) + 1))
        out.append(dcg / idcg if idcg > 0 else None)
    return out


def _ranking(q, n, classes, levels, seed):
    """Random labels and a full ranking of the database by integer scores with ties (broken by row)."""
    g = torch.Generator().manual_seed(seed)
    db = torch.randint(0, classes, (n,), generator=g)
    queries = torch.randint(0, classes + 1, (q,), generator=g)  # label ``classes`` has no relevant item
    scores = torch.randint(0, levels, (q, n), generator=g)
    ranked = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return queries, db, ranked


def _pad(ranked, width):
    return torch.cat([ranked, torch.full((ranked.shape[0], width - ranked.shape[1]), -1)], dim=1)


sizes = st.tuples(
    st.integers(0, 7),  # Q
    st.integers(1, 25),  # N
    st.integers(1, 12),  # k
    st.integers(1, 5),  # label classes
    st.integers(1, 6),  # score levels (1: every score tied)
    st.integers(0, 2**31 - 1),
)


@settings(max_examples=40, deadline=None)
@given(sizes, st.integers(0, 25), st.booleans())
def test_matches_the_loop(case, cut, graded):
    q, n, k, classes, levels, seed = case
    queries, db, ranked = _ranking(q, n, classes, levels, seed)
    ranked = ranked[:, : max(k, min(cut, n))]  # fewer columns than N: map@r may be short
    if ranked.shape[1] < k:  # k beyond the database: -1 padding
        ranked = _pad(ranked, k)
    gains = dr_graded_relevance(classes + 1) if graded and classes >= 1 else None
    rows = _loop(queries, db, ranked, k, gains)
    ndcg = _loop_ndcg(queries, db, ranked, k, gains)
    per = retrieval_metrics(queries, db, ranked, k, graded_relevance=gains, per_query=True)
    got = retrieval_metrics(queries, db, ranked, k, graded_relevance=gains)
    scored = [r for r in rows if r is not None]
    assert got["queries"] == len(scored)
    assert got["queries_without_relevant"] == q - len(scored)
    assert got["ndcg_queries"] == sum(v is not None for v in ndcg)
    for template in KEYS:
        key = template.format(k=k)
        assert per[key].dtype == torch.float64 and per[key].shape == (q,)
        if key.startswith("ndcg@"):
            for qi, value in enumerate(ndcg):
                want = math.nan if value is None else value
                assert float(per[key][qi]) == pytest.approx(want, abs=1e-12, nan_ok=True), (key, qi)
            kept = [v for v in ndcg if v is not None]
            assert got[key] == pytest.approx(sum(kept) / len(kept) if kept else math.nan, abs=1e-12, nan_ok=True)
            continue
        for qi, row in enumerate(rows):
            want = math.nan if row is None else row[key]
            assert float(per[key][qi]) == pytest.approx(want, abs=1e-12, nan_ok=True), (key, qi)
        values = [r[key] for r in scored]
        mean = math.nan if not values or any(math.isnan(v) for v in values) else sum(values) / len(values)
        assert got[key] == pytest.approx(mean, abs=1e-12, nan_ok=True), key
    assert got[f"hit_rate@{k}"] == got[f"precision@{k}"] or not scored
    assert got[f"map_min@{k}"] <= got[f"map@{k}"] + 1e-12 or not scored


@settings(max_examples=25, deadline=None)
@given(sizes, st.booleans())
def test_leave_one_out_matches_the_loop(case, graded):
    _, n, k, classes, levels, seed = case
    _, db, _ = _ranking(0, n, classes, levels, seed)
    g = torch.Generator().manual_seed(seed)
    exclude = torch.where(torch.rand(n, generator=g) < 0.8, torch.arange(n), -1)  # some rows keep their own
    scores = torch.randint(0, levels, (n, n), generator=g).float()
    scores[exclude >= 0, exclude[exclude >= 0]] = -math.inf  # never rank the excluded row
    ranked = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranked = torch.where(torch.isinf(scores.gather(1, ranked)), -1, ranked)  # it becomes padding
    ranked = _pad(ranked, max(k, n))
    gains = dr_graded_relevance(classes) if graded and classes >= 2 else None
    rows = _loop(db, db, ranked, k, gains, exclude)
    ndcg = _loop_ndcg(db, db, ranked, k, gains, exclude)
    per = retrieval_metrics(db, db, ranked, k, graded_relevance=gains, exclude_index=exclude, per_query=True)
    for template in KEYS:
        key = template.format(k=k)
        for qi, row in enumerate(rows):
            if key.startswith("ndcg@"):
                want = math.nan if ndcg[qi] is None else ndcg[qi]
            else:
                want = math.nan if row is None else row[key]
            assert float(per[key][qi]) == pytest.approx(want, abs=1e-12, nan_ok=True), (key, qi)
    with pytest.raises(ValueError, match="holds the row exclude_index leaves out"):
        retrieval_metrics(db, db, torch.arange(n).unsqueeze(1), 1, exclude_index=torch.arange(n))


@settings(max_examples=25, deadline=None)
@given(sizes)
def test_equals_torchmetrics(case):
    q, n, k, classes, levels, seed = case
    q = max(q, 1)
    queries, db, ranked = _ranking(q, n, classes, levels, seed)
    # torchmetrics sorts by preds (and treats preds <= 0 as not retrieved): give it strictly
    # decreasing positive scores along our ranking, so both sides see the same order despite ties
    preds = torch.empty(q, n, dtype=torch.float64)
    preds.scatter_(1, ranked, torch.linspace(1.0, 0.01, n, dtype=torch.float64).expand(q, n))
    target = db.unsqueeze(0) == queries.unsqueeze(1)
    indexes = torch.arange(q).unsqueeze(1).expand(q, n)
    ours = retrieval_metrics(queries, db, _pad(ranked, max(k, n)), k)
    p, t, ix = preds.flatten(), target.flatten(), indexes.flatten()
    checks = {
        f"map@{k}": RetrievalMAP(top_k=k, empty_target_action="skip"),
        f"precision@{k}": RetrievalPrecision(top_k=k, empty_target_action="skip"),
        f"recall@{k}": RetrievalRecall(top_k=k, empty_target_action="skip"),
        "mrr": RetrievalMRR(top_k=k, empty_target_action="skip"),
        f"ndcg@{k}": RetrievalNormalizedDCG(top_k=k, empty_target_action="skip"),
    }
    for key, metric in checks.items():
        theirs = float(metric(p, t, indexes=ix))
        if ours["queries"] == 0:  # torchmetrics returns 0 when it skipped every query
            assert math.isnan(ours[key]) and theirs == 0.0
        else:
            assert ours[key] == pytest.approx(theirs, abs=1e-6), key
    # graded gains: torchmetrics' target is the gain itself (linear, not 2^g - 1), the ideal DCG
    # sorts all of a query's gains; compare on the queries with a relevant item
    gains = dr_graded_relevance(classes + 1)
    padded = _pad(ranked, max(k, n))
    graded = retrieval_metrics(queries, db, padded, k, graded_relevance=gains, per_query=True)[f"ndcg@{k}"]
    keep = target.any(1)
    if bool(keep.any()):
        gain = gains[queries.unsqueeze(1), db.unsqueeze(0)]
        metric = RetrievalNormalizedDCG(top_k=k)
        theirs = float(metric(preds[keep].flatten(), gain[keep].flatten(), indexes=indexes[keep].flatten()))
        assert float(graded[keep].mean()) == pytest.approx(theirs, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_pml_accuracy_calculator(seed):
    pytest.importorskip("faiss")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, 16, generator=g) * 3
    ref_labels = torch.randint(0, 4, (300,), generator=g)
    query_labels = torch.randint(0, 5, (60,), generator=g)  # label 4: no reference item, left out by both
    reference = centres[ref_labels] + torch.randn(300, 16, generator=g) * 2
    queries = centres[query_labels] + torch.randn(60, 16, generator=g) * 2
    # PML's default FaissKNN ranks by L2 distance: on unit vectors that is the cosine ranking
    reference = torch.nn.functional.normalize(reference, dim=1)
    queries = torch.nn.functional.normalize(queries, dim=1)
    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    # pytorch-metric-learning 2.x: get_accuracy(query, query_labels, reference, reference_labels, ...)
    theirs = calculator.get_accuracy(
        query=queries,
        query_labels=query_labels,
        reference=reference,
        reference_labels=ref_labels,
        ref_includes_query=False,
    )
    needed = map_at_r_columns(query_labels, ref_labels)
    assert needed == int(torch.bincount(ref_labels).max())
    hits = RetrievalIndex(reference, ref_labels).search(queries, k=needed)
    ours = retrieval_metrics(query_labels, ref_labels, hits.indices, 1)
    assert ours["queries_without_relevant"] == int((query_labels == 4).sum()) > 0
    assert ours["precision@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    short = retrieval_metrics(query_labels, ref_labels, hits.indices[:, : needed - 1], 1)
    assert math.isnan(short["map@r"])  # one column short of the largest class: undefined


def test_leave_one_out_equals_pml_ref_includes_query():
    pytest.importorskip("faiss")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    g = torch.Generator().manual_seed(2)
    centres = torch.randn(4, 16, generator=g) * 3
    labels = torch.cat([torch.randint(0, 3, (199,), generator=g), torch.tensor([3])])  # label 3: a lone item
    embeddings = torch.nn.functional.normalize(centres[labels] + torch.randn(200, 16, generator=g) * 2, dim=1)
    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    theirs = calculator.get_accuracy(query=embeddings, query_labels=labels, ref_includes_query=True)
    n = labels.shape[0]
    own = torch.arange(n)
    hits = RetrievalIndex(embeddings, labels).search(embeddings, k=map_at_r_columns(labels, labels), exclude_index=own)
    ours = retrieval_metrics(labels, labels, hits.indices, 1, exclude_index=own)
    assert ours["queries_without_relevant"] == 1  # the lone item has nothing left to find
    assert ours["precision@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


def test_edge_cases_are_defined():
    db = torch.tensor([0, 0, 1])
    # query label 2 has no relevant item: left out of the means and counted
    m = retrieval_metrics(torch.tensor([0, 2]), db, torch.tensor([[2, 0, 1], [0, 1, 2]]), 3)
    assert m["queries"] == 1 and m["queries_without_relevant"] == 1
    assert m["precision@3"] == pytest.approx(2 / 3) and m["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["map_min@3"] == pytest.approx((1 / 2 + 2 / 3) / 2) and m["map_legacy@3"] == pytest.approx(7 / 18)
    assert m["mrr"] == 0.5 and m["recall@3"] == 1.0 and m["map@r"] == pytest.approx(1 / 4)
    # k beyond the database: the padded ranks are misses and precision still divides by k
    padded = retrieval_metrics(torch.tensor([1]), db, torch.tensor([[2, 0, 1, -1, -1]]), 5)
    assert padded["precision@5"] == pytest.approx(1 / 5) and padded["recall@5"] == 1.0
    assert padded["ndcg@5"] == 1.0 and padded["map@r"] == 1.0
    # padding inside the top k (fewer candidates) is a miss too
    gap = retrieval_metrics(torch.tensor([0]), db, torch.tensor([[-1, 0, -1]]), 3)
    assert gap["precision@3"] == pytest.approx(1 / 3) and gap["mrr"] == 0.5 and gap["map@r"] == pytest.approx(0.25)
    # mAP@R needs R ranked columns
    short = retrieval_metrics(torch.tensor([0]), db, torch.tensor([[0]]), 1)
    assert math.isnan(short["map@r"]) and short["precision@1"] == 1.0
    # only query without relevant items, or no query at all: NaN means, counts 0
    none = retrieval_metrics(torch.tensor([5]), db, torch.tensor([[0]]), 1)
    assert none["queries"] == 0 and none["queries_without_relevant"] == 1 and math.isnan(none["map@1"])
    empty = retrieval_metrics(torch.tensor([], dtype=torch.long), db, torch.zeros(0, 2, dtype=torch.long), 2)
    assert empty["queries"] == 0 and math.isnan(empty["mrr"])
    per = retrieval_metrics(torch.tensor([0, 2]), db, torch.tensor([[2, 0, 1], [0, 1, 2]]), 3, per_query=True)
    assert per["mrr"][0] == 0.5 and math.isnan(float(per["mrr"][1]))
    # labels are compared, not indexed (without graded relevance): any integers, same result
    shifted = retrieval_metrics(torch.tensor([-7, 193]), db * 100 - 7, torch.tensor([[2, 0, 1], [0, 1, 2]]), 3)
    assert shifted == m
    assert map_at_r_columns(torch.tensor([2]), db) == 1 and map_at_r_columns(torch.tensor([0, 1]), db) == 2


def test_graded_ndcg_by_hand():
    gains = dr_graded_relevance(3)  # rows [1, .5, 0], [.5, 1, .5], [0, .5, 1]
    db = torch.tensor([0, 1, 2, 2])
    m = retrieval_metrics(torch.tensor([2]), db, torch.tensor([[1, 2]]), 2, graded_relevance=gains)
    dcg = 0.5 + 1.0 / math.log2(3)
    idcg = 1.0 + 1.0 / math.log2(3)  # the two grade-2 items first
    assert m["ndcg@2"] == pytest.approx(dcg / idcg)
    # binary metrics keep same-label relevance
    assert m["precision@2"] == 0.5 and m["mrr"] == 0.5
    # a zero table: no gain anywhere, no NDCG (torchmetrics skips the query as it has no positive target)
    zero = retrieval_metrics(torch.tensor([2]), db, torch.tensor([[1, 2]]), 2, graded_relevance=torch.zeros(3, 3))
    assert math.isnan(zero["ndcg@2"]) and zero["ndcg_queries"] == 0


def test_stratified_breakdown_weights_back_to_the_overall_mean():
    queries, db, ranked = _ranking(60, 50, 4, 5, 3)
    strata = torch.arange(60) % 3
    out = stratified_retrieval_metrics(queries, db, ranked, 5, strata, ["a", "b", "c"])
    assert {k: v for k, v in out["overall"].items() if k != "n"} == retrieval_metrics(queries, db, ranked, 5)
    assert all(out[s]["n"] == out[s]["queries"] + out[s]["queries_without_relevant"] for s in ["overall", *"abc"])
    total = sum(out[s]["queries"] for s in "abc")
    assert total == out["overall"]["queries"] > 0
    assert sum(out[s]["queries_without_relevant"] for s in "abc") == out["overall"]["queries_without_relevant"] > 0
    for template in KEYS:
        key = template.format(k=5)
        mean = sum(out[s][key] * out[s]["queries"] for s in "abc") / total
        assert mean == pytest.approx(out["overall"][key], abs=1e-12), key
    by_grade = stratified_retrieval_metrics(queries, db, ranked, 5, queries, [f"grade {i}" for i in range(5)])
    assert by_grade["grade 4"]["queries"] == 0 and by_grade["grade 4"]["queries_without_relevant"] > 0
    empty = stratified_retrieval_metrics(queries, db, ranked, 5, torch.zeros(60, dtype=torch.long), ["a", "b"])
    assert empty["b"]["queries"] == 0 and empty["b"]["queries_without_relevant"] == 0
    assert all(math.isnan(empty["b"][t.format(k=5)]) for t in KEYS)
    assert empty["a"] == empty["overall"]


def test_dr_graded_relevance():
    table = dr_graded_relevance(5)
    assert table.dtype == torch.float64 and table.shape == (5, 5)
    for a in range(5):
        for b in range(5):
            assert float(table[a, b]) == 1 - abs(a - b) / 4
    assert dr_graded_relevance(2).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="num_grades"):
        dr_graded_relevance(1)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((torch.tensor([0.5]), torch.tensor([0]), torch.tensor([[0]]), 1), {}, TypeError, "query_labels"),
        ((torch.tensor([0]), torch.tensor([True]), torch.tensor([[0]]), 1), {}, TypeError, "database_labels"),
        ((torch.tensor([0]), torch.tensor([0]), torch.tensor([[0.0]]), 1), {}, TypeError, "ranked_indices"),
        ((torch.tensor([[0]]), torch.tensor([0]), torch.tensor([[0]]), 1), {}, ValueError, "query_labels"),
        ((torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), 1), {}, ValueError, r"ranked_indices.*\(Q=1, K\)"),
        ((torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([[0]]), 1), {}, ValueError, r"\(Q=2, K\)"),
        ((torch.tensor([0]), torch.tensor([0]), torch.tensor([[0]]), 2), {}, ValueError, "k=2 exceeds the K=1"),
        ((torch.tensor([0]), torch.tensor([0]), torch.tensor([[0]]), 0), {}, ValueError, "k must be"),
        ((torch.tensor([0]), torch.tensor([0]), torch.tensor([[3]]), 1), {}, ValueError, r"\[-1, N=1\)"),
        ((torch.tensor([0]), torch.tensor([0]), torch.tensor([[-2]]), 1), {}, ValueError, r"\[-1, N=1\)"),
        ((torch.tensor([0]), torch.tensor([], dtype=torch.long), torch.tensor([[0]]), 1), {}, ValueError, "empty"),
        (
            (torch.tensor([3]), torch.tensor([0]), torch.tensor([[0]]), 1),
            {"graded_relevance": dr_graded_relevance(3)},
            ValueError,
            r"query_labels must hold class ids in \[0, 2\]",
        ),
        (
            (torch.tensor([0]), torch.tensor([0]), torch.tensor([[0]]), 1),
            {"graded_relevance": torch.ones(2, 3)},
            ValueError,
            r"graded_relevance must have shape \(G, G\)",
        ),
        (
            (torch.tensor([0]), torch.tensor([0]), torch.tensor([[0]]), 1),
            {"graded_relevance": -torch.ones(2, 2)},
            ValueError,
            "gains >= 0",
        ),
        (
            (torch.tensor([0]), torch.tensor([0]), torch.tensor([[0]]), 1),
            {"graded_relevance": torch.eye(2, dtype=torch.long)},
            TypeError,
            "graded_relevance",
        ),
        (
            (torch.tensor([0]), torch.tensor([0, 1]), torch.tensor([[0]]), 1),
            {"exclude_index": torch.tensor([2])},
            ValueError,
            r"exclude_index entries must lie in \[-1, M=2\)",
        ),
        (
            (torch.tensor([0]), torch.tensor([0, 1]), torch.tensor([[0]]), 1),
            {"exclude_index": torch.tensor([1, 1])},
            ValueError,
            r"exclude_index must have shape \(1,\)",
        ),
    ],
)
def test_bad_input_is_named(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        retrieval_metrics(*args, **kwargs)


def test_bad_strata_are_named():
    q, db, ranked = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[0], [1]])
    with pytest.raises(ValueError, match=r"strata must have shape \(2,\)"):
        stratified_retrieval_metrics(q, db, ranked, 1, torch.tensor([0]), ["a"])
    with pytest.raises(ValueError, match=r"strata must hold class ids in \[0, 0\]"):
        stratified_retrieval_metrics(q, db, ranked, 1, torch.tensor([0, 1]), ["a"])
    with pytest.raises(ValueError, match="strata_names must be distinct"):
        stratified_retrieval_metrics(q, db, ranked, 1, torch.tensor([0, 0]), ["a", "a"])
    with pytest.raises(ValueError, match="other than 'overall'"):
        stratified_retrieval_metrics(q, db, ranked, 1, torch.tensor([0, 0]), ["overall"])
