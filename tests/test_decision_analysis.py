"""The decision analysis of finished MKCNet runs (benchmarks/mkcnet_decisions.py): its macro F1 and fitted biases."""

import torch
from benchmarks.mkcnet_decisions import fitted_bias, macro_f1
from sklearn.metrics import f1_score


def test_macro_f1_is_scikit_learns_for_every_row():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (50,), generator=g)
    decisions = torch.randint(0, 3, (4, 50), generator=g)
    decisions[3] = 0  # classes never predicted count as 0
    want = [f1_score(target, row, average="macro", labels=[0, 1, 2], zero_division=0) for row in decisions]
    torch.testing.assert_close(macro_f1(decisions, target, 3), torch.tensor(want, dtype=torch.float64))


def test_a_fitted_bias_recovers_a_class_the_argmax_never_predicts():
    """Class 2's images score 0.5 below class 1 (never predicted); a bias just past 0.5 separates them."""
    target = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    log_probs = torch.full((30, 3), -5.0, dtype=torch.float64)
    log_probs[target == 0, 0] = -0.1
    log_probs[target == 1, 1] = -0.1
    log_probs[target == 2, 1], log_probs[target == 2, 2] = -0.5, -1.0
    assert macro_f1(log_probs.argmax(1)[None], target, 3).item() < 0.7
    bias = fitted_bias(log_probs, target)
    assert bias[0] == 0 and 0.5 < (bias[2] - bias[1]).item() <= 0.6 + 1e-9  # the smallest correction that works
    assert macro_f1((log_probs + bias).argmax(1)[None], target, 3).item() == 1.0
