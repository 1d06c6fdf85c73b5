"""The one rule for strata: every stratum listed in order, empty ones with zero counts and NaN metrics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.metrics import (
    stratified_diagnosis_metrics,
    stratified_grading_metrics,
    stratified_retrieval_metrics,
    stratified_segmentation_metrics,
    stratify,
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=30), st.integers(0, 10_000))
def test_counts_add_up_and_empty_strata_follow_the_rule(ids: list[int], seed: int) -> None:
    values = torch.rand(len(ids), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    strata = torch.tensor(ids)
    names = ["Good", "Usable", "Reject", "Other"]
    calls: list[int] = []

    def measure(keep: torch.Tensor) -> dict[str, float]:
        calls.append(int(keep.sum()))
        return {"mean": float(values[keep].mean()), "items": int(keep.sum())}

    out = stratify(measure, strata, names)
    assert list(out) == ["overall", *names]
    assert 0 not in calls  # never measured on nothing
    assert sum(out[n]["n"] for n in names) == out["overall"]["n"] == len(ids)
    for index, name in enumerate(names):
        members = values[strata == index]
        if members.numel() == 0:
            assert out[name]["n"] == 0 and out[name]["items"] == 0 and math.isnan(out[name]["mean"])
        else:
            assert out[name]["mean"] == pytest.approx(float(members.mean()))  # the float64 reference


def test_refuses_bad_names_and_ids_by_name() -> None:
    with pytest.raises(ValueError, match="names"):
        stratify(lambda keep: {}, torch.tensor([0]), ["overall"])
    with pytest.raises(ValueError, match="names"):
        stratify(lambda keep: {}, torch.tensor([0]), ["a", "a"])
    with pytest.raises(ValueError, match="strata"):
        stratify(lambda keep: {}, torch.tensor([2]), ["a", "b"])


def test_every_stratified_metric_keeps_the_rule() -> None:
    """Grading, diagnosis, retrieval and segmentation list an empty stratum the same way."""
    strata, names = torch.tensor([0, 0, 1, 1]), ["Good", "Usable", "Reject"]
    preds, target = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    masks = torch.zeros(4, 4, 4, dtype=torch.bool)
    masks[:, :2] = True
    ranked = torch.tensor([[1, 2], [0, 3], [3, 0], [2, 1]])
    results = [
        stratified_grading_metrics(preds, target, 2, strata, names),
        stratified_diagnosis_metrics(probs, target, strata, names),
        stratified_retrieval_metrics(target, target, ranked, 2, strata, names),
        stratified_segmentation_metrics(masks, masks, strata, names),
    ]
    for out in results:
        assert list(out) == ["overall", *names]
        assert out["Reject"]["n"] == 0 and out["Good"]["n"] == 2 and out["overall"]["n"] == 4
        assert all(v == 0 if isinstance(v, int) else math.isnan(v) for v in out["Reject"].values())
