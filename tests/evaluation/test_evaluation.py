"""qualcl.evaluation against float64 references: the probe vs scikit-learn, kNN and retrieval vs dense loops."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from qualcl.evaluation import LinearProbe, RetrievalIndex, feature_geometry, knn_predict, linear_probe


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 4), st.sampled_from([1e-3, 1e-1]))
def test_probe_equals_sklearn_logistic_regression(seed, classes, weight_decay):
    g = torch.Generator().manual_seed(seed)
    n, d = 60, 5
    labels = torch.arange(n) % classes
    features = torch.randn(n, d, generator=g, dtype=torch.float64) + labels[:, None].double()
    probe = LinearProbe(classes, weight_decay=weight_decay).fit(features, labels)
    x = ((features - features.mean(0)) / features.std(0, unbiased=False)).numpy()
    # sklearn fits one logit for two classes; our two softmax rows at the optimum are ±w/2, which halves the penalty
    c = 1 / (weight_decay * n) if classes == 2 else 1 / (2 * weight_decay * n)
    reference = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(x, labels.numpy())
    ours = torch.softmax(probe.logits(features), dim=1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(x), atol=1e-5)
    preds = linear_probe(features, labels, features, classes, weight_decay=weight_decay)
    assert torch.equal(preds, probe.predict(features))


def test_probe_errors():
    with pytest.raises(ValueError, match="num_classes"):
        LinearProbe(1)
    with pytest.raises(ValueError, match="weight_decay"):
        LinearProbe(2, weight_decay=-1)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        LinearProbe(2).fit(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"labels must hold class ids in \[0, 1\], got out-of-range id\(s\) \[2\]"):
        LinearProbe(2).fit(torch.zeros(3, 1), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        LinearProbe(2).fit(torch.full((2, 1), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="fit"):
        LinearProbe(2).predict(torch.zeros(1, 2))
    fitted = LinearProbe(2).fit(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"features must have 3 features \(dim 1\), got shape \(1, 2\)"):
        fitted.predict(torch.zeros(1, 2))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 12), st.integers(1, 6), st.integers(1, 4))
def test_feature_geometry_matches_a_naive_loop(seed, n, d, num_levels):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g, dtype=torch.float64)
    levels = torch.randint(0, num_levels, (n,), generator=g)
    out = feature_geometry(features, levels)
    x = (features - features.mean(0)).numpy()
    within, between = [], []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            c = float(x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])))
            (within if levels[i] == levels[j] else between).append(c)
    for key, ref in (("within_level_cosine", within), ("between_level_cosine", between)):
        if ref:
            assert out[key] == pytest.approx(float(np.mean(ref)), abs=1e-9)
        else:
            assert out[key] != out[key]  # nan
    sv = np.linalg.svd(x, compute_uv=False)
    p = sv / sv.sum()
    p = p[p > 0]
    assert out["effective_rank"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)
    assert 1.0 - 1e-9 <= out["effective_rank"] <= min(n, d) + 1e-9


def test_feature_geometry_sees_level_collapse():
    levels = torch.arange(4).repeat(50)
    collapsed = 5 * torch.eye(4, dtype=torch.float64)[levels] + 1e-3 * torch.randn(200, 4, dtype=torch.float64)
    out = feature_geometry(collapsed, levels)
    assert out["within_level_cosine"] > 0.999
    assert out["between_level_cosine"] == pytest.approx(-1 / 3, abs=1e-3)
    assert out["effective_rank"] == pytest.approx(3.0, abs=0.05)
    with pytest.raises(ValueError, match="at least two"):
        feature_geometry(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))
    with pytest.raises(TypeError, match="groups must be an integer tensor"):
        feature_geometry(collapsed, levels.float())


def _dense_search(queries, database, k, exclude=None, normalize=True):
    """float64 reference: the whole similarity matrix and a stable descending sort."""
    q, d = queries.double(), database.double()
    if normalize:
        q, d = q / q.norm(dim=1, keepdim=True), d / d.norm(dim=1, keepdim=True)
    scores = q @ d.T
    if exclude is not None:
        for i, j in enumerate(exclude.tolist()):
            if j >= 0:
                scores[i, j] = float("-inf")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(1, 30),
    st.integers(1, 9),
    st.integers(1, 40),
    st.booleans(),
    st.booleans(),
)
def test_retrieval_index_equals_a_dense_stable_sort_for_any_chunk_size(seed, n, q, chunk, ties, exclude):
    g = torch.Generator().manual_seed(seed)
    if ties:  # small integers and dot products: many exactly equal similarities exercise the tie rule
        database = torch.randint(-2, 3, (n, 4), generator=g).double()
    else:
        database = torch.randn(n, 4, generator=g, dtype=torch.float64)
    queries = database[torch.randint(0, n, (q,), generator=g)] + (0 if ties else 0.1)
    labels = torch.randint(0, 3, (n,), generator=g)
    k = int(torch.randint(1, n + 1, (1,), generator=g))
    skip = torch.randint(-1, n, (q,), generator=g) if exclude else None
    index = RetrievalIndex(database, labels, chunk_size=chunk, normalize=not ties)
    hits = index.search(queries, k, exclude_index=skip)
    values, order = _dense_search(queries, database, k, skip, normalize=not ties)
    finite = torch.isfinite(values)
    assert torch.equal(hits.indices[finite], order[finite])
    torch.testing.assert_close(hits.similarities[finite], values[finite])
    assert bool((hits.indices[~finite] == -1).all()) and bool((hits.labels[~finite] == -1).all())
    assert torch.equal(hits.labels[finite], labels[order[finite]])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 300), st.integers(1, 400), st.sampled_from(["float32", "float16"]))
def test_the_index_divides_by_its_stored_row_norms_bitwise_like_normalising_every_chunk(seed, n, chunk, dtype):
    from qualcl.kernels import topk_similarity

    g = torch.Generator().manual_seed(seed)
    database = (torch.randn(n, 24, generator=g) * torch.rand(n, 1, generator=g) * 5 + 0.01).to(getattr(torch, dtype))
    queries = torch.randn(7, 24, generator=g)
    k = min(n, 5)
    hits = RetrievalIndex(database, chunk_size=chunk).search(queries, k)
    values, indices = topk_similarity(queries, database, k, column_chunk_size=min(chunk, n))
    assert torch.equal(hits.indices, indices) and torch.equal(hits.similarities, values)


def test_retrieval_index_errors():
    index = RetrievalIndex(torch.randn(5, 3))
    assert len(index) == 5 and index.dim == 3
    assert index.search(torch.randn(2, 3), 5).labels is None
    with pytest.raises(ValueError, match=r"k \(at most N, the database size\) must be an int in \[1, 5\], got 6"):
        index.search(torch.randn(2, 3), 6)
    with pytest.raises(ValueError, match="queries"):
        index.search(torch.randn(2, 4), 1)
    with pytest.raises(ValueError, match=r"labels must have shape \(5,\)"):
        RetrievalIndex(torch.randn(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        RetrievalIndex(torch.randn(5, 3), chunk_size=0)
    with pytest.raises(ValueError, match="exclude_index"):
        index.search(torch.randn(2, 3), 1, exclude_index=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="screen"):
        RetrievalIndex(torch.randn(5, 3), screen="on")


@pytest.mark.parametrize("screen", [True, False])
def test_the_index_passes_its_screen_choice_to_the_search(screen, monkeypatch):
    import qualcl.kernels.topk as topk_module

    calls = []
    original = topk_module.screened_topk
    monkeypatch.setattr(topk_module, "screened_topk", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    g = torch.Generator().manual_seed(0)
    database, queries = torch.randn(300, 16, generator=g), torch.randn(9, 16, generator=g)
    hits = RetrievalIndex(database, chunk_size=64, screen=screen).search(queries, 4)
    assert calls == ([1] if screen else [])
    want = torch.topk(F.normalize(queries.double(), dim=1) @ F.normalize(database.double(), dim=1).T, 4)
    assert torch.equal(hits.indices, want.indices)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 25), st.integers(1, 6), st.sampled_from(["softmax", "uniform"]))
def test_knn_matches_a_naive_float64_loop(seed, n, q, weighting):
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(n, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=g)
    test = torch.randn(q, 5, generator=g, dtype=torch.float64)
    k = int(torch.randint(1, n + 1, (1,), generator=g))
    out = knn_predict(train, labels, test, k=k, temperature=0.1, num_classes=3, weighting=weighting, chunk_size=7)
    values, order = _dense_search(test, train, k)
    for i in range(q):
        scores = [0.0, 0.0, 0.0]
        for s, j in zip(values[i].tolist(), order[i].tolist(), strict=True):
            scores[int(labels[j])] += float(np.exp((s - 1) / 0.1)) if weighting == "softmax" else 1.0
        np.testing.assert_allclose(out.scores[i].numpy(), scores, rtol=1e-9, atol=1e-300)
        assert int(out.predictions[i]) == int(np.argmax(scores))


def test_knn_errors():
    with pytest.raises(ValueError, match="weighting"):
        knn_predict(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.randn(1, 2), k=1, weighting="x")
    with pytest.raises(ValueError, match=r"train_labels must have shape \(3,\)"):
        knn_predict(torch.randn(3, 2), torch.zeros(2, dtype=torch.long), torch.randn(1, 2), k=1)
    with pytest.raises(ValueError, match=r"train_labels must hold class ids in \[0, 0\]"):
        knn_predict(torch.randn(3, 2), torch.tensor([0, 1, 0]), torch.randn(1, 2), k=1, num_classes=1)
