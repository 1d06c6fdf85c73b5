"""``weighted_reduce`` against a float64 loop, and the shared argument checks with their messages."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qualcl._validation import (
    check_embeddings,
    check_finite,
    check_mask,
    check_positive,
    check_reduction,
    check_weights,
)
from qualcl.functional.reduction import weighted_reduce

rows = st.lists(st.tuples(st.floats(-10, 10), st.floats(0, 5)), min_size=1, max_size=30)


@given(rows, st.booleans())
def test_weighted_reduce_equals_a_float64_loop(pairs, with_weights):
    losses = torch.tensor([l for l, _ in pairs], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([w for _, w in pairs], dtype=torch.float64) if with_weights else None
    w = [wi for _, wi in pairs] if with_weights else [1.0] * len(pairs)
    products = [li * wi for (li, _), wi in zip(pairs, w, strict=True)]
    total = sum(w)
    assert float(weighted_reduce(losses, weights, "sum")) == pytest.approx(sum(products), abs=1e-9)
    assert weighted_reduce(losses, weights, "none").tolist() == pytest.approx(products, abs=1e-12)
    mean = weighted_reduce(losses, weights, "mean")
    # exact rational reference: tiny (subnormal) weights must not underflow the mean or blow up its gradient
    exact_total = sum(Fraction(wi) for wi in w)
    exact_sum = sum(Fraction(li) * Fraction(wi) for (li, _), wi in zip(pairs, w, strict=True))
    assert float(mean) == pytest.approx(float(exact_sum / exact_total) if total > 0 else 0.0, abs=1e-9)
    mean.backward()  # always attached, also when every weight is zero
    expected = [float(Fraction(wi) / exact_total) if total > 0 else 0.0 for wi in w]
    assert losses.grad.tolist() == pytest.approx(expected, abs=1e-12)
    assert all(math.isfinite(g) for g in losses.grad.tolist())


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_check_positive(value):
    if math.isfinite(value) and value > 0:
        assert check_positive("tau", value) == value
    else:
        with pytest.raises(ValueError, match="tau must be a finite number > 0"):
            check_positive("tau", value)


def test_checks_name_the_argument_and_what_came():
    assert check_reduction("sum") == "sum"
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"):
        check_reduction("avg")
    with pytest.raises(TypeError, match="tau must be a finite number > 0, got bool"):
        check_positive("tau", True)
    with pytest.raises(ValueError, match="x contains 2 non-finite"):
        check_finite("x", torch.tensor([1.0, math.nan, math.inf]))
    check_finite("ids", torch.tensor([1, 2]))  # integer tensors have nothing to check
    with pytest.raises(ValueError, match=r"z must have shape \(N, D\), got shape \(3,\)"):
        check_embeddings("z", torch.zeros(3))
    with pytest.raises(ValueError, match="z is empty"):
        check_embeddings("z", torch.zeros(0, 4))
    check_embeddings("z", torch.zeros(0, 4), allow_empty=True)
    with pytest.raises(ValueError, match="D = 5 features to match"):
        check_embeddings("z", torch.zeros(2, 4), dim=5)
    with pytest.raises(TypeError, match="floating-point"):
        check_embeddings("z", torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="bool tensor"):
        check_mask("m", torch.zeros(2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"m must have shape \(2, 3\)"):
        check_mask("m", torch.zeros(2, 2, dtype=torch.bool), (2, 3))
    with pytest.raises(ValueError, match="w must be non-negative"):
        check_weights("w", torch.tensor([1.0, -1.0]), 2)
    with pytest.raises(ValueError, match=r"w must have shape \(3,\)"):
        check_weights("w", torch.ones(2), 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_finite_finds_one_bad_value_and_passes_sums_that_overflow(dtype, bad):
    big = torch.full((64,), torch.finfo(dtype).max, dtype=dtype)  # finite values whose sum overflows
    check_finite("x", big)
    for position in (0, 31, 63):
        x = big.clone()
        x[position] = bad
        with pytest.raises(ValueError, match="x contains 1 non-finite"):
            check_finite("x", x)
