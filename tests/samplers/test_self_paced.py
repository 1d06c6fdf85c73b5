import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pytorch_metric_learning.losses import NTXentLoss

from qualcl.functional import info_nce, info_nce_from_logits
from qualcl.losses import MultiLevelInfoNCE
from qualcl.samplers import CosineCountSchedule, SelfPacedHardNegativeMiner


@given(st.integers(1, 500), st.integers(1, 300), st.integers(-5, 400), st.integers(1, 5))
def test_schedule_matches_formula(total, max_steps, step, min_count):
    got = CosineCountSchedule(total, max_steps, min_count=min_count)(step)
    t = min(max(step, 0), max_steps)
    want = max(min_count, math.floor(total * math.cos(math.pi * t / (2 * max_steps))))
    assert got == min(total, want)
    assert CosineCountSchedule(None, max_steps, min_count=min_count)(step, total=total) == got


def test_schedule_is_monotone_and_spans_all_to_min():
    s = CosineCountSchedule(64, 50)
    values = [s(t) for t in range(51)]
    assert values[0] == 64
    assert values[-1] == 1
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize(
    ("args", "match"),
    [((0, 10), "total"), ((5, 0), "max_steps"), ((5, 10, 0), "min_count"), ((5.0, 10), "total")],
)
def test_schedule_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        CosineCountSchedule(*args)


def test_schedule_needs_total_when_built_without():
    with pytest.raises(ValueError, match="total"):
        CosineCountSchedule(None, 10)(3)


def _sims(seed, b, m):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1, torch.rand(
        b, m, generator=g, dtype=torch.float64
    ) * 2 - 1


@given(st.integers(1, 12), st.integers(1, 20), st.integers(0, 2**31 - 1), st.integers(0, 40), st.booleans())
def test_kept_negatives_are_exactly_the_top_k(b, m, seed, step, quantize):
    pos, neg = _sims(seed, b, m)
    if quantize:  # many ties
        neg = (neg * 3).round() / 3
    miner = SelfPacedHardNegativeMiner(CosineCountSchedule(None, 40), threshold="off")
    out = miner(pos, neg, temperature=0.1, step=step)
    k = CosineCountSchedule(None, 40)(step, total=m)
    kth = torch.topk(neg, k, dim=1).values[:, -1:]
    assert torch.equal(out.negative_mask, neg >= kth)
    assert bool((out.negative_mask.sum(1) >= k).all())
    assert miner.last_stats.count == k


def _restricted(pos, neg, keep, tau):
    return info_nce_from_logits(pos / tau, neg / tau, keep)


@given(st.integers(1, 12), st.integers(1, 20), st.integers(0, 2**31 - 1), st.integers(0, 40))
def test_selection_for_each_threshold(b, m, seed, step):
    pos, neg = _sims(seed, b, m)
    tau = 0.5
    schedule = CosineCountSchedule(None, 40)
    k = schedule(step, total=m)
    for threshold, scale in (("literal", 1.0), ("scaled", 3.0)):
        out = SelfPacedHardNegativeMiner(schedule, threshold, scale=scale)(pos, neg, temperature=tau, step=step)
        losses = _restricted(pos, neg, out.negative_mask, tau)
        assert out.weights.tolist() == [float(v < scale / k) for v in losses.tolist()]
    miner = SelfPacedHardNegativeMiner(schedule, "quantile", rho_start=0.25, rho_end=0.75)
    out = miner(pos, neg, temperature=tau, step=step)
    losses = _restricted(pos, neg, out.negative_mask, tau)
    rho = 0.25 + 0.5 * step / 40
    n_keep = max(1, math.ceil(rho * b))
    lam = sorted(losses.tolist())[n_keep - 1]
    assert out.weights.tolist() == [float(v <= lam) for v in losses.tolist()]
    assert miner.last_stats.selected_fraction >= n_keep / b - 1e-12
    off = SelfPacedHardNegativeMiner(schedule, "off")(pos, neg, temperature=tau, step=step)
    assert bool((off.weights == 1).all())


@given(st.integers(2, 10), st.integers(0, 2**31 - 1))
def test_k_equal_all_and_off_is_plain_info_nce(n, seed):
    g = torch.Generator().manual_seed(seed)
    q, p, c = (torch.randn(n, 5, generator=g, dtype=torch.float64) for _ in range(3))
    miner = SelfPacedHardNegativeMiner(CosineCountSchedule(None, 100), threshold="off")
    mask, weights = miner.select(q, p, c, step=0, temperature=0.2)
    torch.testing.assert_close(
        info_nce(q, p, c, temperature=0.2, negative_mask=mask, weights=weights.double()),
        info_nce(q, p, c, temperature=0.2),
    )


def test_standalone_selection_equals_top_k_info_nce():
    g = torch.Generator().manual_seed(0)
    q, p, c = (torch.randn(9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    miner = SelfPacedHardNegativeMiner(CosineCountSchedule(None, 10), threshold="off")
    mask, _ = miner.select(q, p, c, step=6, temperature=0.3)
    k = miner.last_stats.count
    torch.testing.assert_close(
        info_nce(q, p, c, temperature=0.3, negative_mask=mask), info_nce(q, p, c, temperature=0.3, top_k=k)
    )


def test_plugs_into_multi_level_loss_and_keeps_gradients():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(16, 8, generator=g, requires_grad=True)
    z2 = torch.randn(16, 8, generator=g)
    levels = torch.arange(4).repeat_interleave(4)
    miner = SelfPacedHardNegativeMiner(CosineCountSchedule(None, 10), threshold="quantile")
    out = MultiLevelInfoNCE(miner=miner)(z1, z2, levels, step=5, output_dict=True)
    out.loss.backward()
    assert z1.grad is not None
    assert out.counts["L/H"]["selected_anchors"] >= 2


def test_mine_gives_pml_tuples_equal_to_qualcl_loss():
    g = torch.Generator().manual_seed(2)
    z1, z2 = (torch.randn(12, 6, generator=g, dtype=torch.float64) for _ in range(2))
    miner = SelfPacedHardNegativeMiner(CosineCountSchedule(None, 10), threshold="quantile")
    tau = 0.2
    tuples = miner.mine(z1, z2, step=7, temperature=tau)
    a1, p, a2, n = tuples
    assert torch.equal(a1, p)
    assert set(a2.tolist()) <= set(a1.tolist())
    assert bool((a2 != n).all())
    labels = torch.arange(12)
    pml = NTXentLoss(temperature=tau)(z1, labels, indices_tuple=tuples, ref_emb=z2, ref_labels=labels)
    # the same selection through qualcl: in-batch negatives restricted to the mined ones
    keep = torch.zeros(12, 12, dtype=torch.bool)
    keep[a2, n] = True
    weights = torch.zeros(12, dtype=torch.float64)
    weights[a1] = 1.0
    ours = info_nce(z1, z2, z2, temperature=tau, negative_mask=keep, weights=weights)
    torch.testing.assert_close(pml.to(ours.dtype), ours)


def test_bad_arguments():
    schedule = CosineCountSchedule(None, 10)
    with pytest.raises(ValueError, match="threshold"):
        SelfPacedHardNegativeMiner(schedule, "median")
    with pytest.raises(ValueError, match="rho_start"):
        SelfPacedHardNegativeMiner(schedule, rho_start=0.0)
    with pytest.raises(ValueError, match="scale"):
        SelfPacedHardNegativeMiner(schedule, scale=-1.0)
    with pytest.raises(TypeError, match="schedule"):
        SelfPacedHardNegativeMiner(lambda t: 3)
    miner = SelfPacedHardNegativeMiner(schedule)
    with pytest.raises(ValueError, match="step"):
        miner(torch.zeros(2), torch.zeros(2, 3), temperature=0.1, step=None)
    with pytest.raises(ValueError, match="negative_sim"):
        miner(torch.zeros(2), torch.zeros(3, 3), temperature=0.1, step=1)
    with pytest.raises(ValueError, match="ref_emb"):
        miner.mine(torch.zeros(3, 2) + 1, torch.ones(2, 2), step=1)
