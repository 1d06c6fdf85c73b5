"""Dice / IoU per image against float64 set counts; landmark errors and success rates."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qualcl.metrics import (
    binarize,
    landmark_metrics,
    radial_errors,
    segmentation_metrics,
    segmentation_scores,
    stratified_segmentation_metrics,
)


def _reference(p: torch.Tensor, t: torch.Tensor) -> tuple[list[float], list[float]]:
    dice, iou = [], []
    for pi, ti in zip(p.tolist(), t.tolist(), strict=True):
        a = {(r, c) for r, row in enumerate(pi) for c, v in enumerate(row) if v}
        b = {(r, c) for r, row in enumerate(ti) for c, v in enumerate(row) if v}
        if not b:
            dice.append(math.nan)
            iou.append(math.nan)
            continue
        dice.append(2 * len(a & b) / (len(a) + len(b)))
        iou.append(len(a & b) / len(a | b))
    return dice, iou


@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_scores_match_set_counts(n, side, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, side, side, generator=g) < 0.4
    t = torch.rand(n, side, side, generator=g) < 0.3
    got = segmentation_scores(p, t)
    dice, iou = _reference(p, t)
    torch.testing.assert_close(got["dice"], torch.tensor(dice, dtype=torch.float64), equal_nan=True)
    torch.testing.assert_close(got["iou"], torch.tensor(iou, dtype=torch.float64), equal_nan=True)
    summary = segmentation_metrics(p.unsqueeze(1), t.unsqueeze(1))
    kept = [d for d in dice if not math.isnan(d)]
    assert summary["images"] == len(kept) and summary["empty"] == n - len(kept)
    if kept:
        assert summary["dice"] == pytest.approx(sum(kept) / len(kept))


def test_binarize_thresholds_and_strata_split():
    probs = torch.tensor([[[0.2, 0.9], [0.5, 0.51]]])
    assert binarize(probs).tolist() == [[[False, True], [False, True]]]
    t = torch.ones(4, 2, 2, dtype=torch.bool)
    p = t.clone()
    p[2:] = False
    out = stratified_segmentation_metrics(p, t, torch.tensor([0, 0, 1, 1]), ("Good", "Usable", "Reject"))
    assert out["Good"]["dice"] == 1.0 and out["Usable"]["dice"] == 0.0
    assert out["Reject"]["n"] == 0 and math.isnan(out["Reject"]["dice"])  # listed, as every empty stratum
    assert out["overall"]["dice"] == 0.5


def test_segmentation_rejects_bad_input():
    with pytest.raises(ValueError, match="binary"):
        segmentation_scores(torch.rand(1, 2, 2), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="same shape"):
        segmentation_scores(torch.ones(1, 2, 2), torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="masks"):
        segmentation_scores(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="strata"):
        stratified_segmentation_metrics(torch.ones(2, 2, 2), torch.ones(2, 2, 2), torch.tensor([0, 3]), ["a"])


def test_radial_errors_and_success_rates():
    pred = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    target = torch.zeros(3, 2)
    errors = radial_errors(pred, target, spacing=0.5)
    torch.testing.assert_close(errors, torch.tensor([0.0, 2.5, math.sqrt(2) / 2], dtype=torch.float64))
    out = landmark_metrics(pred, target, radii=(1.0, 5.0))
    assert out["sdr@1"] == pytest.approx(1 / 3) and out["sdr@5"] == 1.0
    assert out["mre"] == pytest.approx((0 + 5 + math.sqrt(2)) / 3)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        radial_errors(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="spacing"):
        radial_errors(pred, target, spacing=0.0)


@given(st.integers(1, 6), st.floats(0.1, 5.0), st.integers(0, 2**31 - 1))
def test_radial_errors_and_success_rates_match_a_loop(n, spacing, seed):
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.rand(n, 2, generator=g) * 20, torch.rand(n, 2, generator=g) * 20
    expected = [
        math.hypot(p[0] - t[0], p[1] - t[1]) * spacing
        for p, t in zip(pred.double().tolist(), target.double().tolist(), strict=True)
    ]
    torch.testing.assert_close(
        radial_errors(pred, target, spacing=spacing), torch.tensor(expected, dtype=torch.float64)
    )
    out = landmark_metrics(pred, target, radii=(3.0,), spacing=spacing)
    assert out["mre"] == pytest.approx(sum(expected) / n)
    assert out["sdr@3"] == pytest.approx(sum(e <= 3.0 for e in expected) / n)
