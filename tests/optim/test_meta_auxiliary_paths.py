"""Issue 28: detached auxiliary targets no longer give a zero meta gradient without a word."""

import warnings

import pytest
import torch
from torch import nn

from qualcl.optim import MetaAuxiliaryOptimizer

MODES = ["second_order", "first_order", "finite_difference"]


def _problem(seed=0):
    torch.manual_seed(seed)
    task, meta = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    return task, meta, x, y


def _closures(meta, x, y, *, detach, direct):
    def inner(forward):
        targets = torch.softmax(meta(x), 1)
        if detach:
            targets = targets.detach()
        return -(targets * torch.log_softmax(forward(x), 1)).sum(1).mean()

    def outer(forward):
        loss = nn.functional.cross_entropy(forward(x), y)
        if direct:
            probs = torch.softmax(meta(x), 1)
            loss = loss + 0.1 * (probs * probs.log()).sum(1).mean()
        return loss

    return inner, outer


@pytest.mark.parametrize("mode", ["second_order", "finite_difference"])
def test_detached_targets_without_a_direct_term_are_refused(mode):
    task, meta, x, y = _problem()
    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.1), 0.1, mode=mode)
    before = [p.detach().clone() for p in meta.parameters()]
    with pytest.raises(ValueError, match=r"neither inner_loss_fn nor outer_loss_fn depends on meta_model.*detached"):
        opt.step(*_closures(meta, x, y, detach=True, direct=False))
    assert all(torch.equal(p, b) for p, b in zip(meta.parameters(), before, strict=True))  # not stepped


def test_targets_from_no_grad_are_refused_too():
    task, meta, x, y = _problem()
    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.1), 0.1)

    def inner(forward):
        with torch.no_grad():
            targets = torch.softmax(meta(x), 1)
        return -(targets * torch.log_softmax(forward(x), 1)).sum(1).mean()

    with pytest.raises(ValueError, match="meta gradient would be zero"):
        opt.step(inner, _closures(meta, x, y, detach=False, direct=False)[1])


@pytest.mark.parametrize("mode", ["second_order", "finite_difference"])
def test_detached_targets_beside_a_direct_term_warn(mode):
    task, meta, x, y = _problem()
    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.1), 0.1, mode=mode)
    with pytest.warns(UserWarning, match="inner_loss_fn does not depend on meta_model.*only outer_loss_fn's direct"):
        opt.step(*_closures(meta, x, y, detach=True, direct=True))


def test_first_order_without_a_direct_term_warns_that_the_gradient_is_zero():
    task, meta, x, y = _problem()
    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.1), 0.1, mode="first_order")
    with pytest.warns(UserWarning, match="meta gradient is zero"):
        opt.step(*_closures(meta, x, y, detach=False, direct=False))


@pytest.mark.parametrize("mode", MODES)
def test_connected_targets_step_silently(mode):
    task, meta, x, y = _problem()
    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.1), 0.1, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = opt.step(*_closures(meta, x, y, detach=False, direct=True))
    assert float(stats["meta_grad_norm"]) > 0
