"""Collapse metrics: a collapsed and a healthy embedding, against float64 loops and their limits."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.evaluation import collapse_metrics, effective_rank


def _loop_uniformity(x: torch.Tensor, t: float) -> float:
    u = torch.nn.functional.normalize(x.double(), dim=1)
    n = len(u)
    terms = [math.exp(-t * float(((u[i] - u[j]) ** 2).sum())) for i in range(n) for j in range(n) if i != j]
    return math.log(sum(terms) / len(terms))


def _loop_alignment(x: torch.Tensor, y: torch.Tensor, alpha: float) -> float:
    u, v = (torch.nn.functional.normalize(z.double(), dim=1) for z in (x, y))
    return sum(float((u[i] - v[i]).norm()) ** alpha for i in range(len(u))) / len(u)


@given(st.integers(2, 12), st.integers(1, 6), st.integers(0, 2**31 - 1), st.sampled_from([0.5, 2.0, 4.0]))
@settings(max_examples=30, deadline=None)
def test_matches_float64_loops(n, d, seed, t):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=g) + 0.1, torch.randn(n, d, generator=g) + 0.1
    out = collapse_metrics(x, y, t=t, alpha=1.5)
    assert out["uniformity"] == pytest.approx(min(_loop_uniformity(x, t), 0.0), abs=1e-9)
    assert out["alignment"] == pytest.approx(_loop_alignment(x, y, 1.5), rel=1e-9)
    assert 1.0 - 1e-9 <= out["effective_rank"] <= min(n, d) + 1e-9


def test_collapsed_and_healthy_embeddings_are_told_apart():
    g = torch.Generator().manual_seed(0)
    healthy = torch.randn(256, 64, generator=g)
    collapsed = torch.randn(1, 64, generator=g).expand(256, 64) + 1e-4 * torch.randn(256, 64, generator=g)
    good, bad = (
        collapse_metrics(healthy, healthy + 0.1 * torch.randn(256, 64, generator=g)),
        collapse_metrics(collapsed),
    )
    assert good["effective_rank"] > 40 and bad["effective_rank"] < 2
    assert good["uniformity"] == pytest.approx(-4.0, abs=0.2) and bad["uniformity"] > -1e-3
    assert good["alignment"] < 0.05


def test_effective_rank_limits_and_scale_invariance():
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    assert effective_rank(torch.zeros(3, 4)) == 1.0
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    assert effective_rank(3.0 * x) == pytest.approx(effective_rank(x))


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="embeddings"):
        collapse_metrics(torch.randn(1, 3))
    with pytest.raises(ValueError, match="positives"):
        collapse_metrics(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="t"):
        collapse_metrics(torch.randn(4, 3), t=0.0)
    with pytest.raises(ValueError, match="embeddings"):
        collapse_metrics(torch.full((4, 3), float("nan")))
