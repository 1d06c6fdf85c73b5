import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import reference
from qualcl.functional import batch_entropy, focal_loss
from qualcl.losses import FocalLoss


def _logits(seed: int, n: int, c: int):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


def _soft(seed: int, n: int, c: int):
    return torch.softmax(_logits(seed + 99, n, c), dim=1)


cases = st.tuples(st.integers(1, 8), st.integers(1, 6), st.integers(0, 2**31 - 1))


@given(cases, st.sampled_from([0.0, 0.5, 2.0, 5.0]), st.booleans())
def test_matches_naive_reference(case, gamma, soft):
    n, c, seed = case
    logits = _logits(seed, n, c)
    target = _soft(seed, n, c) if soft else torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))
    got = focal_loss(logits, target, gamma=gamma, reduction="none")
    torch.testing.assert_close(got, torch.tensor(reference.focal(logits, target, gamma), dtype=torch.float64))


@given(cases, st.booleans())
def test_gamma_zero_is_cross_entropy(case, soft):
    n, c, seed = case
    logits = _logits(seed, n, c)
    target = _soft(seed, n, c) if soft else torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target))


@given(cases)
def test_focal_is_at_most_cross_entropy(case):
    n, c, seed = case
    logits = _logits(seed, n, c)
    target = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))
    assert bool(
        (
            focal_loss(logits, target, reduction="none") <= F.cross_entropy(logits, target, reduction="none") + 1e-12
        ).all()
    )


def test_weights_and_gradcheck():
    logits = _logits(0, 5, 3).requires_grad_()
    target = torch.tensor([0, 2, 1, 1, 0])
    w = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    per = focal_loss(logits, target, reduction="none")
    torch.testing.assert_close(focal_loss(logits, target, weights=w), (per * w).sum() / w.sum())
    assert torch.autograd.gradcheck(lambda z: focal_loss(z, _soft(1, 5, 3), gamma=2.0), (logits,))


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (torch.tensor([0, 3]), "class ids"),
        (torch.tensor([0, 1, 2]), "target"),
        (torch.full((2, 2), 0.5), "target"),
        (-torch.ones(2, 3), "non-negative"),
    ],
)
def test_bad_targets(target, match):
    with pytest.raises(ValueError, match=match):
        focal_loss(_logits(0, 2, 3), target)


def test_bad_arguments():
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="logits"):
        focal_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="logits.*non-finite"):
        focal_loss(torch.full((2, 3), float("nan")), torch.tensor([0, 1]))


@given(cases)
def test_batch_entropy_reference_and_bounds(case):
    n, c, seed = case
    probs = _soft(seed, n, c)
    mean = probs.mean(0).tolist()
    want = -sum(p * math.log(p + 1e-20) for p in mean)
    got = batch_entropy(probs)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    assert -1e-12 <= got.item() <= math.log(c) + 1e-12


def test_batch_entropy_extremes_and_errors():
    assert batch_entropy(torch.eye(4)).item() == pytest.approx(math.log(4))
    assert batch_entropy(torch.tensor([[1.0, 0.0]] * 3)).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="probs"):
        batch_entropy(torch.ones(3))
    with pytest.raises(ValueError, match="probs"):
        batch_entropy(-torch.ones(2, 2))
