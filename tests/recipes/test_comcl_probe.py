"""The linear probe against scikit-learn's logistic regression (float64), and on a finished run folder."""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from qualcl.recipes.comcl import comcl_config, run_comcl
from qualcl.recipes.comcl.data import load_eyeq_layout
from qualcl.recipes.comcl.probe import LinearProbe, feature_geometry, probe_run


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


def test_probe_errors():
    with pytest.raises(ValueError, match="num_classes"):
        LinearProbe(1)
    with pytest.raises(ValueError, match="weight_decay"):
        LinearProbe(2, weight_decay=-1)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        LinearProbe(2).fit(torch.zeros(3), torch.zeros(3))
    with pytest.raises(RuntimeError, match="fit"):
        LinearProbe(2).predict(torch.zeros(1, 2))


def test_probe_run_is_cached_and_covers_the_baseline(tmp_path):
    config = comcl_config("smoke")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=str(tmp_path / "data")))
    for method in ("comcl", "none"):
        variant = dataclasses.replace(config, pretrain=dataclasses.replace(config.pretrain, method=method))
        run_comcl(variant, tmp_path / method)
    train = load_eyeq_layout(tmp_path / "data", "train", config.data.image_size, with_truth_boxes=True)
    test = load_eyeq_layout(tmp_path / "data", "test", config.data.image_size, with_truth_boxes=True)
    for method in ("comcl", "none"):
        result = probe_run(tmp_path / method, train, test)
        assert set(result["grade"]) == {"overall", "Good", "Usable", "Reject"}
        assert result["grade"]["overall"]["n"] == result["low_quality"]["n"] == len(test)
        assert 1.0 <= result["geometry"]["effective_rank"] <= 512
        assert (tmp_path / method / "probe.json").is_file()
        assert probe_run(tmp_path / method, train, test) == result


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
        feature_geometry(torch.zeros(1, 3), torch.zeros(1))
