"""Retrieval metrics against loops, torchmetrics and pytorch-metric-learning's AccuracyCalculator."""

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
from qualcl.metrics import dr_graded_relevance, retrieval_metrics, stratified_retrieval_metrics


def _loop(q_labels, db_labels, ranked, k, gains=None):
    """Every metric per query with explicit loops (float64)."""
    rows = []
    for qi, label in enumerate(q_labels.tolist()):
        relevant = sum(1 for d in db_labels.tolist() if d == label)
        if relevant == 0:
            continue
        hits, ap, first, dcg = 0, 0.0, 0.0, 0.0
        for r, j in enumerate(ranked[qi, :k].tolist(), start=1):
            gain = 0.0
            if j >= 0:
                rel = db_labels[j] == label
                gain = float(gains[label, db_labels[j]]) if gains is not None else float(rel)
                if rel:
                    hits += 1
                    ap += hits / r
                    first = first or 1.0 / r
            dcg += gain / math.log2(r + 1)
        all_gains = sorted(
            (float(gains[label, d]) if gains is not None else float(d == label) for d in db_labels.tolist()),
            reverse=True,
        )[:k]
        idcg = sum(g / math.log2(r + 2) for r, g in enumerate(all_gains))
        ap_r, h = 0.0, 0
        for r, j in enumerate(ranked[qi, :relevant].tolist(), start=1):
            if j >= 0 and db_labels[j] == label:
                h += 1
                ap_r += h / r
        rows.append(
            {
                f"precision@{k}": hits / k,
                f"recall@{k}": hits / relevant,
                f"map@{k}": ap / hits if hits else 0.0,
                f"map_min@{k}": ap / min(k, relevant),
                "mrr": first,
                f"ndcg@{k}": dcg / idcg if idcg > 0 else 0.0,
                "precision@1": float(ranked[qi, 0] >= 0 and db_labels[ranked[qi, 0]] == label),
                "map@r": ap_r / relevant if ranked.shape[1] >= relevant else math.nan,
                f"hit_rate@{k}": hits / k,
                f"map_legacy@{k}": ap / k,
            }
        )
    return rows


def _ranking(q, n, seed, classes):
    g = torch.Generator().manual_seed(seed)
    db = torch.randint(0, classes, (n,), generator=g)
    queries = torch.randint(0, classes, (q,), generator=g)
    ranked = torch.stack([torch.randperm(n, generator=g) for _ in range(q)])
    return queries, db, ranked


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(1, 30), st.integers(1, 12), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_matches_the_loop(q, n, k, classes, seed):
    queries, db, ranked = _ranking(q, n, seed, classes)
    if k > n:  # padding beyond the database
        ranked = torch.cat([ranked, torch.full((q, k - n), -1)], dim=1)
    gains = dr_graded_relevance(5)[:classes, :classes] if classes > 1 else None
    rows = _loop(queries, db, ranked, k, gains)
    got = retrieval_metrics(queries, db, ranked, k, graded_relevance=gains)
    assert got["queries"] == len(rows)
    assert got["queries_without_relevant"] == q - len(rows)
    for key in rows[0] if rows else ():
        want = [r[key] for r in rows]
        expected = math.nan if any(math.isnan(v) for v in want) else sum(want) / len(want)
        assert got[key] == pytest.approx(expected, abs=1e-12, nan_ok=True), key


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6), st.integers(2, 25), st.integers(1, 10), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_equals_torchmetrics(q, n, k, classes, seed):
    queries, db, ranked = _ranking(q, n, seed, classes)
    k = min(k, n)
    # torchmetrics sorts by score: give strictly decreasing positive scores along our ranking
    preds = torch.zeros(q, n, dtype=torch.float64)
    for i in range(q):
        preds[i, ranked[i]] = torch.linspace(1.0, 0.01, n, dtype=torch.float64)
    target = db.unsqueeze(0) == queries.unsqueeze(1)
    indexes = torch.arange(q).unsqueeze(1).expand(q, n)
    keep = target.any(1)  # torchmetrics' default skips queries without a relevant item too
    ours = retrieval_metrics(queries, db, ranked, k)
    if not bool(keep.any()):
        assert ours["queries"] == 0
        return
    p, t, ix = preds[keep].flatten(), target[keep].flatten(), indexes[keep].flatten()
    checks = {
        f"map@{k}": RetrievalMAP(top_k=k),
        f"precision@{k}": RetrievalPrecision(top_k=k),
        f"recall@{k}": RetrievalRecall(top_k=k),
        "mrr": RetrievalMRR(top_k=k),
        f"ndcg@{k}": RetrievalNormalizedDCG(top_k=k),
    }
    for key, metric in checks.items():
        assert ours[key] == pytest.approx(float(metric(p, t, indexes=ix)), abs=1e-6), key
    gains = dr_graded_relevance(5)[:classes, :classes] if classes > 1 else torch.ones(1, 1, dtype=torch.float64)
    graded = retrieval_metrics(queries, db, ranked, k, graded_relevance=gains)
    target_gain = gains[queries.unsqueeze(1), db.unsqueeze(0)][keep].flatten()
    assert graded[f"ndcg@{k}"] == pytest.approx(
        float(RetrievalNormalizedDCG(top_k=k)(p, target_gain, indexes=ix)), abs=1e-6
    )


def test_equals_pml_accuracy_calculator():
    pytest.importorskip("faiss")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    ref_labels = torch.randint(0, 4, (300,), generator=g)
    query_labels = torch.randint(0, 4, (60,), generator=g)
    reference = centres[ref_labels] + torch.randn(300, 16, generator=g) * 2
    queries = centres[query_labels] + torch.randn(60, 16, generator=g) * 2
    # PML ranks by L2 distance: on unit vectors that is the cosine ranking RetrievalIndex uses
    reference, queries = torch.nn.functional.normalize(reference, dim=1), torch.nn.functional.normalize(queries, dim=1)
    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    theirs = calculator.get_accuracy(queries, query_labels, reference, ref_labels, ref_includes_query=False)
    needed = int(torch.bincount(ref_labels).max())
    hits = RetrievalIndex(reference, ref_labels).search(queries, k=needed)
    ours = retrieval_metrics(query_labels, ref_labels, hits.indices, 1)
    assert ours["precision@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


def test_edge_cases_are_defined():
    db = torch.tensor([0, 0, 1])
    # query label 2 has no relevant item: left out of the means and counted
    m = retrieval_metrics(torch.tensor([0, 2]), db, torch.tensor([[2, 0, 1], [0, 1, 2]]), 3)
    assert m["queries"] == 1 and m["queries_without_relevant"] == 1
    assert m["precision@3"] == pytest.approx(2 / 3) and m["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # k beyond the database: padding counts as a miss, precision still divides by k
    padded = retrieval_metrics(torch.tensor([1]), db, torch.tensor([[2, 0, 1, -1, -1]]), 5)
    assert padded["precision@5"] == pytest.approx(1 / 5) and padded["recall@5"] == 1.0
    # mAP@R needs R ranked columns
    short = retrieval_metrics(torch.tensor([0]), db, torch.tensor([[0]]), 1)
    assert math.isnan(short["map@r"]) and short["precision@1"] == 1.0
    per = retrieval_metrics(torch.tensor([0, 2]), db, torch.tensor([[2, 0, 1], [0, 1, 2]]), 3, per_query=True)
    assert per["mrr"][0] == 0.5 and math.isnan(float(per["mrr"][1]))


def test_stratified_breakdown_weights_back_to_the_overall_mean():
    queries, db, ranked = _ranking(40, 50, 3, 4)
    strata = torch.arange(40) % 3
    out = stratified_retrieval_metrics(queries, db, ranked, 5, strata, ["a", "b", "c"])
    total = sum(out[s]["queries"] for s in "abc")
    assert total == out["overall"]["queries"]
    mean = sum(out[s]["map@5"] * out[s]["queries"] for s in "abc") / total
    assert mean == pytest.approx(out["overall"]["map@5"])
    empty = stratified_retrieval_metrics(queries, db, ranked, 5, torch.zeros(40, dtype=torch.long), ["a", "b"])
    assert empty["b"]["queries"] == 0 and math.isnan(empty["b"]["map@5"])


def test_dr_graded_relevance():
    table = dr_graded_relevance(5)
    assert table[0].tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert torch.equal(table, table.T)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.tensor([0.5]), torch.tensor([0]), torch.tensor([[0]]), 1), "query_labels"),
        ((torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), 1), "ranked_indices"),
        ((torch.tensor([0]), torch.tensor([0]), torch.tensor([[0]]), 2), "at least 2"),
        ((torch.tensor([0]), torch.tensor([0]), torch.tensor([[3]]), 1), r"\[-1, 1\)"),
        ((torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([[0]]), 1), "rows for 2 queries"),
        ((torch.tensor([0]), torch.tensor([], dtype=torch.long), torch.tensor([[0]]), 1), "empty"),
    ],
)
def test_bad_input_is_named(args, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(*args)
