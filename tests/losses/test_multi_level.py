import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import reference
from qualcl.functional import MinerOutput, NegativeMiner, info_nce, multi_level_info_nce
from qualcl.losses import MultiLevelInfoNCE

COMCL_PAIRS = [(0, 1), (0, 2), (1, 3)]


def _batch(seed: int, n: int, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = torch.randn(n, d, generator=g, dtype=torch.float64)
    levels = torch.randint(0, 4, (n,), generator=g)
    return z1, z2, levels


@given(
    st.integers(1, 16),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["view2", "both"]),
    st.sampled_from([0.05, 0.07, 0.5]),
)
def test_matches_naive_reference(n, seed, negatives_from, tau):
    z1, z2, levels = _batch(seed, n)
    weights = [1.0, 0.5, 2.0]
    loss_fn = MultiLevelInfoNCE(temperature=tau, negatives_from=negatives_from, pair_weights=weights)
    out = loss_fn(z1, z2, levels, output_dict=True)
    total, per_pair = reference.multi_level(z1, z2, levels.tolist(), COMCL_PAIRS, tau, negatives_from, weights)
    torch.testing.assert_close(out.loss, torch.tensor(total, dtype=torch.float64))
    for name, want in zip(["L/LQ_L", "L/H", "LQ_L/LQ_H"], per_pair, strict=True):
        torch.testing.assert_close(out.pair_losses[name], torch.tensor(want, dtype=torch.float64))


@given(st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_rows_that_are_only_view2_negatives_ignore_their_view1(n, seed):
    """LQ_H (id 3) is never an anchor level in the CoMCL pairs: its view-1 rows are unused."""
    z1, z2, levels = _batch(seed, n)
    base = MultiLevelInfoNCE(temperature=0.3)(z1, z2, levels)
    moved = z1.clone()
    moved[levels == 3] = torch.randn(int((levels == 3).sum()), z1.shape[1], dtype=torch.float64)
    torch.testing.assert_close(MultiLevelInfoNCE(temperature=0.3)(moved, z2, levels), base)


def test_counts_and_empty_pair_gives_attached_zero():
    z1, z2, _ = _batch(0, 6)
    z1.requires_grad_()
    levels = torch.tensor([0, 0, 1, 1, 1, 0])  # no H, no LQ_H
    out = MultiLevelInfoNCE()(z1, z2, levels, output_dict=True)
    assert out.pair_losses["L/H"].item() == 0.0
    assert out.pair_losses["LQ_L/LQ_H"].item() == 0.0
    assert out.counts["L/H"] == {"anchors": 3, "negatives": 0}
    assert out.counts["L/LQ_L"] == {"anchors": 3, "negatives": 3}
    out.loss.backward()
    assert z1.grad is not None


def test_batch_with_no_usable_pair_is_attached_zero():
    z1, z2, _ = _batch(0, 4)
    z1.requires_grad_()
    loss = MultiLevelInfoNCE()(z1, z2, torch.full((4,), 2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z1.grad, torch.zeros_like(z1))


class _TopOneMiner:
    def __init__(self):
        self.calls = []

    def __call__(self, positive_sim, negative_sim, *, temperature, step):
        self.calls.append(step)
        assert not positive_sim.requires_grad and not negative_sim.requires_grad
        keep = negative_sim == negative_sim.max(dim=1, keepdim=True).values
        weights = torch.zeros(positive_sim.shape[0], dtype=positive_sim.dtype)
        weights[0] = 1.0
        return MinerOutput(keep, weights)


def test_miner_restricts_negatives_and_weights_anchors():
    z1, z2, _ = _batch(3, 8)
    levels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 3])
    miner = _TopOneMiner()
    assert isinstance(miner, NegativeMiner)
    out = MultiLevelInfoNCE(pairs=[("L", "LQ_L")], temperature=0.2, miner=miner)(
        z1, z2, levels, step=7, output_dict=True
    )
    assert miner.calls == [7]
    anchors = levels == 0
    full = info_nce(z1[anchors], z2[anchors], z2[levels == 1], temperature=0.2, top_k=1, reduction="none")
    torch.testing.assert_close(out.loss, full[0])
    assert out.counts["L/LQ_L"]["selected_anchors"] == 1


def test_functional_accepts_level_ids():
    z1, z2, levels = _batch(1, 10)
    result = multi_level_info_nce(z1, z2, levels, COMCL_PAIRS, temperature=0.07)
    torch.testing.assert_close(result.loss, MultiLevelInfoNCE()(z1, z2, levels))


def test_gradcheck():
    z1, z2, _ = _batch(2, 8, d=3)
    levels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    z1.requires_grad_()
    z2.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: MultiLevelInfoNCE(temperature=0.5, negatives_from="both")(a, b, levels), (z1, z2)
    )


def test_unknown_level_id_is_named():
    z1, z2, _ = _batch(0, 3)
    with pytest.raises(ValueError, match=r"unknown level id\(s\) \[7\]"):
        MultiLevelInfoNCE()(z1, z2, torch.tensor([0, 7, 1]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pairs": [("L", "XX")]}, "'XX'"),
        ({"pairs": [("L", "L")]}, "same-level"),
        ({"pairs": []}, "pairs"),
        ({"temperature": 0.0}, "temperature"),
        ({"pair_weights": [1.0]}, "pair_weights"),
        ({"negatives_from": "view1"}, "negatives_from"),
        ({"level_names": ("L", "L", "H", "LQ_H")}, "level_names"),
    ],
)
def test_bad_construction_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiLevelInfoNCE(**kwargs)


def test_bad_forward_inputs():
    z1, z2, levels = _batch(0, 4)
    loss_fn = MultiLevelInfoNCE()
    with pytest.raises(ValueError, match="view2"):
        loss_fn(z1, z2[:3], levels)
    with pytest.raises(ValueError, match="levels"):
        loss_fn(z1, z2, levels[:3])
    with pytest.raises(TypeError, match="levels"):
        loss_fn(z1, z2, levels.float())
    with pytest.raises(ValueError, match="view1"):
        loss_fn(z1[:0], z2[:0], levels[:0])
