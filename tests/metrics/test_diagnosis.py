"""AUC / accuracy / F1 of diagnosis probabilities against scikit-learn and a naive pair-counting loop."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import f1_score, roc_auc_score

from qualcl.metrics import binary_auroc, diagnosis_metrics, multiclass_auroc_ovo, stratified_diagnosis_metrics


def naive_auc(scores, positive):
    """Mann-Whitney by counting every (positive, negative) pair, in float64."""
    pos = [float(s) for s, p in zip(scores, positive, strict=True) if p]
    neg = [float(s) for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return math.nan
    total = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return total / (len(pos) * len(neg))


# scores on a coarse grid so that ties are frequent
scored = st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=1, max_size=40)


@given(scored)
def test_binary_auroc_equals_pair_counting_and_sklearn(pairs):
    scores = torch.tensor([s / 6 for s, _ in pairs], dtype=torch.float64)
    positive = torch.tensor([p for _, p in pairs])
    ours = binary_auroc(scores, positive)
    reference = naive_auc(scores.tolist(), positive.tolist())
    if math.isnan(reference):
        assert math.isnan(ours)
        return
    assert ours == pytest.approx(reference, abs=1e-12)
    assert ours == pytest.approx(roc_auc_score(positive.numpy(), scores.numpy()), abs=1e-12)


def _probs(draw_rows, c):
    x = torch.tensor(draw_rows, dtype=torch.float64).view(-1, c)
    return torch.softmax(x, dim=1)


@given(st.integers(3, 5), st.data())
def test_ovo_auc_matches_sklearn_when_every_class_is_present(c, data):
    n = data.draw(st.integers(c, 30))
    target = torch.tensor(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    target[:c] = torch.arange(c)  # every class present, as sklearn requires
    logits = data.draw(st.lists(st.integers(-3, 3), min_size=n * c, max_size=n * c))
    probs = _probs(logits, c)
    ours = multiclass_auroc_ovo(probs, target)
    theirs = roc_auc_score(target.numpy(), probs.numpy(), multi_class="ovo", average="macro", labels=list(range(c)))
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_ovo_auc_skips_absent_classes_and_binary_is_plain_auc():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    target = torch.tensor([0, 1, 1])  # class 2 absent: only the (0, 1) pair counts
    pair = (naive_auc(probs[:, 0], target == 0) + naive_auc(probs[:, 1], target == 1)) / 2
    assert multiclass_auroc_ovo(probs, target) == pytest.approx(pair)
    assert math.isnan(multiclass_auroc_ovo(probs, torch.tensor([1, 1, 1])))
    two = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    assert multiclass_auroc_ovo(two, torch.tensor([0, 1, 0, 1])) == pytest.approx(
        roc_auc_score([0, 1, 0, 1], two[:, 1].numpy())
    )


@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3), st.integers(0, 1)), min_size=2, max_size=30))
def test_binary_diagnosis_metrics_and_the_legacy_hard_label_auc(rows):
    probs = torch.softmax(torch.tensor([[a, b] for a, b, _ in rows], dtype=torch.float64), dim=1)
    target = torch.tensor([t for _, _, t in rows])
    m = diagnosis_metrics(probs, target)
    legacy = diagnosis_metrics(probs, target, legacy_auc=True)
    preds = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(float((preds == target).double().mean()))
    if 0 < int(target.sum()) < len(rows):
        assert m["auc"] == pytest.approx(roc_auc_score(target.numpy(), probs[:, 1].numpy()))
        assert legacy["auc"] == pytest.approx(roc_auc_score(target.numpy(), preds.numpy()))
    else:
        assert math.isnan(m["auc"]) and math.isnan(legacy["auc"])
    if int(((preds == 1) | (target == 1)).sum()):
        assert m["f1"] == pytest.approx(f1_score(target.numpy(), preds.numpy(), zero_division=0.0))
    present = sorted(set(preds.tolist()) | set(target.tolist()))
    assert m["macro_f1"] == pytest.approx(f1_score(target, preds, average="macro", labels=present), abs=1e-6)


def test_stratified_diagnosis_metrics_and_bad_input():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    target = torch.tensor([0, 1, 2, 2])
    out = stratified_diagnosis_metrics(probs, target, torch.tensor([0, 0, 1, 1]), ["Good", "Usable", "Reject"])
    assert out["overall"]["n"] == 4
    assert out["Good"]["accuracy"] == 1.0
    assert out["Usable"]["accuracy"] == 0.5
    assert out["Reject"]["n"] == 0 and math.isnan(out["Reject"]["auc"])
    legacy = diagnosis_metrics(probs, target, legacy_auc=True)
    assert legacy["auc"] == diagnosis_metrics(probs, target)["auc"]  # legacy only changes binary sets
    with pytest.raises(TypeError, match="probs must be a floating-point tensor"):
        diagnosis_metrics(torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="probs must be"):
        diagnosis_metrics(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target must hold class ids"):
        diagnosis_metrics(probs, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="strata"):
        stratified_diagnosis_metrics(probs, target, torch.tensor([0]), ["a"])
    with pytest.raises(ValueError, match="scores and positive"):
        binary_auroc(torch.zeros(3), torch.zeros(2))
    assert np.isnan(binary_auroc(torch.zeros(2), torch.ones(2)))
