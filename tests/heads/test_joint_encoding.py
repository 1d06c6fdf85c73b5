"""JointEncodingMask and MetaLabelGenerator: slice support, L = 1 one-hot limit, stability, references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from qualcl.heads import JointEncodingMask, MetaLabelGenerator

sizes = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5))  # N_d, N_q, L


def _labels(seed: int, n: int, n_d: int, n_q: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_d, (n,), generator=g), torch.randint(0, n_q, (n,), generator=g)


def _logits(seed: int, n: int, k: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def reference(logits: torch.Tensor, y_d: torch.Tensor, y_q: torch.Tensor, n_d: int, length: int, eps: float):
    """The official formula, exp(o) ⊙ B_j / Σ exp(o) ⊙ B_j, in float64 loops."""
    rows = []
    for o, d, q in zip(logits.tolist(), y_d.tolist(), y_q.tolist(), strict=True):
        j = q * n_d + d
        e = [math.exp(v) * (1.0 if k // length == j else eps) for k, v in enumerate(o)]
        rows.append([v / sum(e) for v in e])
    return torch.tensor(rows, dtype=torch.float64)


@given(sizes, st.integers(1, 6), st.sampled_from([1.0, 30.0, 1e4]), st.integers(0, 2**31 - 1))
def test_all_mass_on_the_joint_slice(size, n, scale, seed):
    n_d, n_q, length = size
    mask = JointEncodingMask(n_d, n_q, length)
    y_d, y_q = _labels(seed, n, n_d, n_q)
    logits = _logits(seed, n, mask.num_outputs, scale)  # up to ±1e4: exp would overflow without max-shift
    y = mask(logits, y_d, y_q)
    assert y.shape == (n, length * n_d * n_q) and y.dtype == torch.float64
    assert bool(torch.isfinite(y).all())
    j = y_q * n_d + y_d
    on = mask.mask(j)
    assert torch.equal(on.sum(1), torch.full((n,), length))
    assert bool((y[~on] == 0).all())
    torch.testing.assert_close(y.sum(1), torch.ones(n, dtype=torch.float64))
    for i in range(n):
        assert bool(on[i, int(j[i]) * length : (int(j[i]) + 1) * length].all())


@given(sizes, st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_slice_length_one_gives_one_hot_joint_labels(size, n, seed):
    n_d, n_q, _ = size
    mask = JointEncodingMask(n_d, n_q, 1)
    y_d, y_q = _labels(seed, n, n_d, n_q)
    y = mask(_logits(seed, n, n_d * n_q, 5.0), y_d, y_q)
    one_hot = torch.nn.functional.one_hot(y_q * n_d + y_d, n_d * n_q).double()
    torch.testing.assert_close(y, one_hot, rtol=0, atol=0)


@given(sizes, st.integers(1, 6), st.sampled_from([0.0, 1e-8, 0.3]), st.integers(0, 2**31 - 1))
def test_matches_the_official_formula(size, n, eps, seed):
    n_d, n_q, length = size
    mask = JointEncodingMask(n_d, n_q, length, eps=eps)
    y_d, y_q = _labels(seed, n, n_d, n_q)
    logits = _logits(seed, n, mask.num_outputs, 3.0)
    torch.testing.assert_close(mask(logits, y_d, y_q), reference(logits, y_d, y_q, n_d, length, eps))


@given(sizes)
def test_joint_encoding_order_and_round_trip(size):
    n_d, n_q, length = size
    mask = JointEncodingMask(n_d, n_q, length)
    y_d = torch.arange(n_d).repeat(n_q)
    y_q = torch.arange(n_q).repeat_interleave(n_d)
    joint = mask.encode(y_d, y_q)
    assert joint.tolist() == [q * n_d + d for d, q in zip(y_d.tolist(), y_q.tolist(), strict=True)]
    assert sorted(joint.tolist()) == list(range(n_d * n_q))  # a bijection onto the slices
    d, q = mask.decode(joint)
    assert torch.equal(d, y_d) and torch.equal(q, y_q)
    assert mask.num_joint == n_d * n_q and mask.num_outputs == length * n_d * n_q


def test_invariances_and_gradients():
    mask = JointEncodingMask(3, 2, 4)
    y_d, y_q = torch.tensor([0, 2, 1]), torch.tensor([1, 0, 1])
    logits = _logits(0, 3, 24)
    y = mask(logits, y_d, y_q)
    torch.testing.assert_close(mask(logits + 7.5, y_d, y_q), y)  # shift invariance
    outside = ~mask.mask(mask.encode(y_d, y_q))
    # logits off the slice do not matter
    torch.testing.assert_close(mask(logits + 50.0 * outside, y_d, y_q), y)
    x = logits.clone().requires_grad_()
    joint = mask.encode(y_d, y_q)
    assert torch.autograd.gradcheck(lambda z: mask.masked_softmax(z, joint), (x,))
    (mask.masked_softmax(x, joint) * _logits(1, 3, 24)).sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and bool((x.grad[outside] == 0).all())
    log_y = mask.log_prob(logits, joint)
    assert bool(torch.isneginf(log_y[outside]).all())
    torch.testing.assert_close(log_y[~outside].exp(), y[~outside])


def test_half_logits_give_float32_targets():
    mask = JointEncodingMask(2, 2, 3)
    y = mask(torch.randn(4, 12).half(), torch.tensor([0, 1, 1, 0]), torch.tensor([1, 1, 0, 0]))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.sum(1), torch.ones(4))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: m(torch.randn(2, 11), torch.tensor([0, 1]), torch.tensor([0, 1])), ValueError, "logits"),
        (
            lambda m: m(torch.randn(2, 12), torch.tensor([0, 2]), torch.tensor([0, 1])),
            ValueError,
            "diagnosis",
        ),
        (lambda m: m(torch.randn(2, 12), torch.tensor([0, 1]), torch.tensor([-1, 1])), ValueError, "quality"),
        (
            lambda m: m(torch.randn(2, 12), torch.tensor([0.0, 1.0]), torch.tensor([0, 1])),
            TypeError,
            "diagnosis",
        ),
        (lambda m: m(torch.randn(2, 12), torch.tensor([0, 1]), torch.tensor([0])), ValueError, "quality"),
        (lambda m: m(torch.randn(3, 12), torch.tensor([0, 1]), torch.tensor([0, 1])), ValueError, "joint"),
        (
            lambda m: m(torch.full((2, 12), math.nan), torch.tensor([0, 1]), torch.tensor([0, 1])),
            ValueError,
            "logits",
        ),
        (lambda m: m.mask(torch.tensor([4])), ValueError, "joint"),
        (lambda m: m.decode([1]), TypeError, "joint"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call(JointEncodingMask(2, 2, 3))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_diagnosis": 0}, ValueError, "num_diagnosis"),
        ({"num_quality": 1.5}, TypeError, "num_quality"),
        ({"slice_length": 0}, ValueError, "slice_length"),
        ({"eps": 2.0}, ValueError, "eps"),
        ({"eps": -1e-8}, ValueError, "eps"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    args = {"num_diagnosis": 2, "num_quality": 2, "slice_length": 3, **kwargs}
    with pytest.raises(error, match=match):
        JointEncodingMask(**args)


# ---------------------------------------------------------------- MetaLabelGenerator


def test_meta_label_generator_targets_and_gradients():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 6, 3), nn.AdaptiveAvgPool2d(1))  # (N, 6, 1, 1): flattened
    generator = MetaLabelGenerator(backbone, 6, num_diagnosis=3, num_quality=2, slice_length=5, hidden_dim=7)
    assert generator.num_outputs == 30 and generator.classifier[0].out_features == 7
    x = torch.randn(4, 1, 9, 9)
    y_d, y_q = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0, 1, 0])
    y = generator(x, y_d, y_q)
    assert y.shape == (4, 30)
    torch.testing.assert_close(y.sum(1), torch.ones(4))
    joint = generator.joint_mask.encode(y_d, y_q)
    assert bool((y[~generator.joint_mask.mask(joint)] == 0).all())
    torch.testing.assert_close(y, generator.joint_mask(generator.logits(x), y_d, y_q))
    (y * torch.randn(4, 30)).sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in generator.parameters())


def test_meta_label_generator_bad_inputs():
    with pytest.raises(TypeError, match="backbone"):
        MetaLabelGenerator("vgg", 8, 2, 2, 3)
    with pytest.raises(ValueError, match="feature_dim"):
        MetaLabelGenerator(nn.Identity(), 0, 2, 2, 3)
    with pytest.raises(ValueError, match="hidden_dim"):
        MetaLabelGenerator(nn.Identity(), 4, 2, 2, 3, hidden_dim=0)
    generator = MetaLabelGenerator(nn.Identity(), 4, 2, 2, 3)
    with pytest.raises(ValueError, match="feature_dim"):
        generator(torch.randn(2, 5), torch.tensor([0, 1]), torch.tensor([0, 1]))
