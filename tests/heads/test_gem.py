"""GeM pooling: float64 loop reference, the average / max limits, the power-mean order, gradients in x and p."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from qualcl.heads import GeM


def _x(seed: int, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_gem(x: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    """``(mean_hw max(x, eps)^p)^(1/p)`` with explicit loops in float64."""
    n, c, h, w = x.shape
    xs = x.tolist()
    out = [[0.0] * c for _ in range(n)]
    for b in range(n):
        for ch in range(c):
            total = 0.0
            for a in range(h):
                for d in range(w):
                    total += max(xs[b][ch][a][d], eps) ** p
            out[b][ch] = (total / (h * w)) ** (1.0 / p)
    return torch.tensor(out, dtype=torch.float64)


def log_domain_gem(x: torch.Tensor, p: float) -> list[list[float]]:
    """The same mean in the log domain (``exp((logsumexp(p log x) - log HW) / p)``), loops in float64."""
    out = []
    for image in x.tolist():
        row = []
        for channel in image:
            logs = [p * math.log(v) for line in channel for v in line]
            top = max(logs)
            lse = top + math.log(sum(math.exp(v - top) for v in logs))
            row.append(math.exp((lse - math.log(len(logs))) / p))
        out.append(row)
    return out


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 5),
    st.floats(0.25, 8.0),
    st.sampled_from([1e-6, 1e-2, 0.3]),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_matches_the_loop_reference(n, c, h, w, p, eps, learnable, seed):
    x = (_x(seed, n, c, h, w) - 0.3) * 4.0  # negatives exercise the clamp
    gem = GeM(p=p, learnable=learnable, eps=eps).double()
    got = gem(x)
    assert got.shape == (n, c) and got.dtype == torch.float64
    torch.testing.assert_close(got, reference_gem(x, float(gem.p.detach()), eps), rtol=1e-10, atol=1e-12)
    assert bool((got >= eps * (1 - 1e-12)).all())  # the clamp makes every descriptor positive


def test_p_one_is_average_pooling_and_large_p_approaches_max_pooling():
    x = _x(0, 2, 4, 3, 5) + 0.05  # above eps: the clamp is inactive
    torch.testing.assert_close(GeM(p=1.0, learnable=False).double()(x), x.mean(dim=(2, 3)), rtol=1e-12, atol=0)
    top = x.amax(dim=(2, 3))
    for p in (20.0, 200.0, 2000.0):
        got = GeM(p=p).double()(x)
        # power mean sandwich: max · (1/HW)^(1/p) <= GeM_p <= max, so GeM_p → max as p → ∞
        assert bool((got <= top * (1 + 1e-12)).all())
        assert bool((got >= top * (1 / 15) ** (1 / p) * (1 - 1e-12)).all())
    torch.testing.assert_close(GeM(p=2000.0).double()(x), top, rtol=2e-3, atol=0)
    assert not torch.allclose(GeM(p=3.0).double()(x), top, rtol=2e-3)  # the limit is not reached early


def test_large_p_in_float32_neither_vanishes_nor_overflows():
    # plain x^p underflows to 0 here (0.5^1000 < 1e-300) and large maps overflow (40^30 > 3e38)
    small = _x(1, 2, 3, 4, 5, dtype=torch.float32) * 0.5 + 0.01
    large = small * 80.0
    for x, p in ((small, 1000.0), (large, 30.0)):
        got = GeM(p=p)(x)
        assert bool(torch.isfinite(got).all())
        want = torch.tensor(log_domain_gem(x, p), dtype=torch.float32)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert not bool(torch.isfinite(large.pow(30.0).mean(dim=(2, 3))).all())  # the naive formula overflows
    assert bool((small.pow(1000.0).mean(dim=(2, 3)) == 0).all())  # ... and vanishes


@settings(max_examples=25, deadline=None)
@given(st.floats(0.5, 4.0), st.floats(0.1, 4.0), st.integers(0, 2**31 - 1))
def test_generalised_mean_grows_with_p(p, step, seed):
    x = _x(seed, 2, 3, 2, 3) + 0.01
    low, high = GeM(p=p).double()(x), GeM(p=p + step).double()(x)
    assert bool((low <= high * (1 + 1e-12)).all())  # power-mean inequality
    if p >= 1.0:  # ... and GeM_p >= GeM_1 = average pooling
        assert bool((x.mean(dim=(2, 3)) <= low * (1 + 1e-12)).all())


def test_learnable_parameter_or_buffer():
    gem = GeM(p=3.0)
    assert isinstance(gem.p, nn.Parameter) and gem.p.shape == (1,) and float(gem.p.detach()) == 3.0
    assert [name for name, _ in gem.named_parameters()] == ["p"]
    fixed = GeM(p=2.0, learnable=False)
    assert not isinstance(fixed.p, nn.Parameter) and list(fixed.parameters()) == []
    assert "p" in fixed.state_dict() and "p" in gem.state_dict()  # the public code's key is ``gem.p``
    assert "p=2.0000" in repr(fixed) and "learnable=False" in repr(fixed)
    x = _x(2, 2, 3, 4, 5).requires_grad_()
    GeM(p=3.0).double()(x).sum().backward()
    assert x.grad is not None and bool((x.grad > 0).all())  # every position contributes


def test_gradcheck_with_respect_to_x_and_p():
    gem = GeM(p=2.5).double()
    x = (_x(3, 2, 3, 2, 3) + 0.1).requires_grad_()
    p = torch.tensor([2.5], dtype=torch.float64, requires_grad=True)

    def pool(t: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        return functional_call(gem, {"p": exponent}, (t,))

    assert torch.autograd.gradcheck(pool, (x, p))
    # and the module's own parameter gradient is d/dp of the formula
    gem(x.detach()).sum().backward()
    expected = x.detach().pow(p).mean(dim=(2, 3)).pow(1.0 / p).sum()
    (grad_p,) = torch.autograd.grad(expected, p)
    torch.testing.assert_close(gem.p.grad, grad_p)
    # the clamp: activations below eps get no gradient
    y = torch.tensor([[[[-1.0, 0.5], [2.0, 1e-9]]]], dtype=torch.float64, requires_grad=True)
    GeM(p=3.0).double()(y).sum().backward()
    assert y.grad is not None and y.grad[0, 0, 0, 0] == 0 and y.grad[0, 0, 1, 1] == 0 and y.grad[0, 0, 1, 0] > 0


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: GeM(p=0.0), ValueError, "p must be"),
        (lambda: GeM(p=-1.0), ValueError, "p must be"),
        (lambda: GeM(p=math.nan), ValueError, "p must be"),
        (lambda: GeM(eps=0.0), ValueError, "eps must be"),
        (lambda: GeM(p="3"), TypeError, "p must be"),
    ],
)
def test_bad_constructor_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.rand(3, 4), ValueError, r"x must have shape \(N, C, H, W\)"),
        (torch.ones(2, 3, 2, 2, dtype=torch.long), TypeError, "x must be a floating"),
        (torch.rand(0, 3, 2, 2), ValueError, "x is empty"),
        (torch.full((1, 1, 2, 2), math.inf), ValueError, "x"),
    ],
)
def test_bad_feature_maps(x, error, match):
    with pytest.raises(error, match=match):
        GeM()(x)
