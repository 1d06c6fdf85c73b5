import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score, f1_score

from qualcl.metrics import (
    cohen_kappa,
    confusion_matrix,
    grading_metrics,
    quadratic_weighted_kappa,
    stratified_grading_metrics,
)

labels = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=2, max_size=40)


@given(labels)
def test_qwk_and_f1_match_sklearn(pairs):
    preds = torch.tensor([p for p, _ in pairs])
    target = torch.tensor([t for _, t in pairs])
    ours = quadratic_weighted_kappa(preds, target, 5)
    theirs = cohen_kappa_score(target.numpy(), preds.numpy(), weights="quadratic", labels=list(range(5)))
    if theirs == theirs:  # sklearn gives nan when undefined
        assert ours == pytest.approx(theirs, abs=1e-5)
    unweighted = cohen_kappa_score(target.numpy(), preds.numpy(), labels=list(range(5)))
    if unweighted == unweighted:
        assert cohen_kappa(preds, target, 5) == pytest.approx(unweighted, abs=1e-5)
    m = grading_metrics(preds, target, 5)
    assert m["kappa"] == cohen_kappa(preds, target, 5) or unweighted != unweighted
    present = sorted(set(preds.tolist()) | set(target.tolist()))
    assert m["macro_f1"] == pytest.approx(f1_score(target, preds, average="macro", labels=present), abs=1e-5)
    assert m["accuracy"] == pytest.approx(float((preds == target).float().mean()), abs=1e-6)


def test_stratified_and_confusion():
    preds, target = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])
    out = stratified_grading_metrics(preds, target, 3, torch.tensor([0, 0, 1, 1]), ["Good", "Reject"])
    assert out["Good"]["accuracy"] == 1.0
    assert out["Reject"]["accuracy"] == 0.5
    assert out["overall"]["n"] == 4
    assert confusion_matrix(preds, target, 3).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="preds and target"):
        grading_metrics(preds, target[:2], 3)
    with pytest.raises(ValueError, match=r"target must have shape \(N,\)"):
        cohen_kappa(preds[:, None], target[:, None], 3)
    assert cohen_kappa(preds[:0], target[:0], 3) != cohen_kappa(preds[:0], target[:0], 3)  # nan when empty
    with pytest.raises(ValueError, match="strata"):
        stratified_grading_metrics(preds, target, 3, torch.tensor([0]), ["a"])
