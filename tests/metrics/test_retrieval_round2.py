"""Issue 28: duplicate ranked rows refused, graded NDCG scores the queries torchmetrics scores, HR@k's difference."""

import math

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG

from qualcl.metrics import dr_graded_relevance, retrieval_metrics, stratified_retrieval_metrics


def test_a_row_listed_twice_in_one_ranking_is_refused():
    db = torch.tensor([0, 1, 1])
    # before: recall@3 of query 0 (one relevant item) came out as 3.0
    with pytest.raises(ValueError, match=r"ranked_indices must list each database row at most once.*row 0 3 times"):
        retrieval_metrics(torch.tensor([0]), db, torch.tensor([[0, 0, 0]]), 3)
    with pytest.raises(ValueError, match=r"row 2 2 times for query 1"):
        retrieval_metrics(torch.tensor([0, 1]), db, torch.tensor([[0, 1, 2], [2, -1, 2]]), 2)
    # padding may repeat
    ok = retrieval_metrics(torch.tensor([0]), db, torch.tensor([[0, -1, -1]]), 3)
    assert ok["recall@3"] == 1.0


def _torchmetrics_ndcg(queries, db, ranked, gains, k):
    """torchmetrics' NDCG over every query (its empty_target_action='skip'), ranking given by scores."""
    q, n = ranked.shape
    preds = torch.empty(q, n, dtype=torch.float64)
    preds.scatter_(1, ranked, torch.linspace(1.0, 0.01, n, dtype=torch.float64).expand(q, n))
    target = gains[queries.unsqueeze(1), db.unsqueeze(0)]
    indexes = torch.arange(q).unsqueeze(1).expand(q, n)
    metric = RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")
    return float(metric(preds.flatten(), target.flatten(), indexes=indexes.flatten()))


@pytest.mark.parametrize("seed", range(6))
def test_graded_ndcg_equals_torchmetrics_on_queries_without_their_own_grade(seed):
    g = torch.Generator().manual_seed(seed)
    db = torch.randint(0, 4, (30,), generator=g)  # grade 4 never in the database
    queries = torch.cat([torch.full((5,), 4), torch.randint(0, 5, (10,), generator=g)])
    scores = torch.rand(queries.shape[0], db.shape[0], generator=g)
    ranked = torch.argsort(scores, dim=1, descending=True)
    gains = dr_graded_relevance(5)
    for k in (1, 3, 10, 30):
        ours = retrieval_metrics(queries, db, ranked, k, graded_relevance=gains)
        assert ours["ndcg_queries"] == queries.shape[0]  # the grade-4 queries get gain from grade 3 (and 2)
        assert ours["queries_without_relevant"] >= 5
        assert ours[f"ndcg@{k}"] == pytest.approx(_torchmetrics_ndcg(queries, db, ranked, gains, k), abs=1e-6)
        only_rare = retrieval_metrics(queries[:5], db, ranked[:5], k, graded_relevance=gains)
        assert not math.isnan(only_rare[f"ndcg@{k}"]) and only_rare["queries"] == 0
        assert only_rare[f"ndcg@{k}"] == pytest.approx(
            _torchmetrics_ndcg(queries[:5], db, ranked[:5], gains, k), abs=1e-6
        )


def test_graded_ndcg_per_stratum_scores_the_rare_grade():
    db = torch.tensor([0, 0, 1, 2, 3])
    queries = torch.tensor([4, 0])
    ranked = torch.tensor([[4, 3, 2, 1, 0], [0, 1, 2, 3, 4]])
    out = stratified_retrieval_metrics(
        queries, db, ranked, 2, queries, [f"grade {g}" for g in range(5)], graded_relevance=dr_graded_relevance(5)
    )
    assert out["grade 4"]["ndcg@2"] == pytest.approx(1.0) and out["grade 4"]["ndcg_queries"] == 1
    assert out["grade 4"]["queries"] == 0 and math.isnan(out["grade 4"]["precision@2"])
    assert out["overall"]["ndcg_queries"] == 2


def test_hit_rate_is_the_fundusdr_ratio_not_torchmetrics_hit_rate():
    db = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([0, 1])
    ranked = torch.tensor([[0, 1, 2, 3], [0, 2, 1, 3]])
    ours = retrieval_metrics(queries, db, ranked, 3)
    preds = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, 2.0, 3.0, 1.0]])
    target = db.unsqueeze(0) == queries.unsqueeze(1)
    indexes = torch.arange(2).unsqueeze(1).expand(2, 4)
    theirs = float(RetrievalHitRate(top_k=3)(preds.flatten(), target.flatten(), indexes=indexes.flatten()))
    assert theirs == 1.0  # any hit in the top 3
    assert ours["hit_rate@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)  # hits / k, as documented
    at_one = retrieval_metrics(queries, db, ranked, 1)
    theirs_1 = float(RetrievalHitRate(top_k=1)(preds.flatten(), target.flatten(), indexes=indexes.flatten()))
    assert at_one["hit_rate@1"] == pytest.approx(theirs_1)  # the one k where they agree
