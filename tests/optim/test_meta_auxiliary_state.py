"""MetaAuxiliaryOptimizer's optimizer surface: param_groups, state, zero_grad, and an exact state_dict round trip."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qualcl.optim import MetaAuxiliaryOptimizer


def _setup(seed: int = 0, mode: str = "second_order"):
    torch.manual_seed(seed)
    task, meta = nn.Linear(4, 6).double(), nn.Linear(4, 6).double()
    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.Adam(meta.parameters(), lr=1e-2), inner_lr=0.05, mode=mode)
    return task, meta, opt


def _closures(meta: nn.Module, step: int):
    g = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(0, 6, (8,), generator=g)

    def inner(forward):
        return -(torch.softmax(meta(x), 1) * torch.log_softmax(forward(x), 1)).sum(1).mean()

    def outer(forward):
        return nn.functional.cross_entropy(forward(x), y) + 0.1 * torch.softmax(meta(x), 1).pow(2).mean()

    return inner, outer


@pytest.mark.parametrize("mode", ["second_order", "first_order", "finite_difference"])
def test_a_restored_optimizer_takes_the_same_next_step(mode):
    task, meta, opt = _setup(mode=mode)
    for step in range(2):
        opt.step(*_closures(meta, step))
    saved = copy.deepcopy(opt.state_dict())
    saved_meta = copy.deepcopy(meta.state_dict())
    opt.step(*_closures(meta, 2))
    expected = [p.detach().clone() for p in meta.parameters()]

    task2, meta2, opt2 = _setup(seed=1, mode=mode)  # other initial weights, fresh Adam state
    task2.load_state_dict(task.state_dict())
    meta2.load_state_dict(saved_meta)
    opt2.load_state_dict(saved)
    opt2.step(*_closures(meta2, 2))
    for got, want in zip(meta2.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # Adam's moments and step count came back
    assert opt2.state_dict()["settings"] == opt.state_dict()["settings"]


def test_the_optimizer_surface_is_the_meta_optimizers():
    _, meta, opt = _setup()
    assert opt.param_groups is opt.meta_optimizer.param_groups
    opt.param_groups[0]["lr"] = 0.5  # what a scheduler does
    assert opt.meta_optimizer.param_groups[0]["lr"] == 0.5
    opt.step(*_closures(meta, 0))
    assert len(opt.state) == 2 and all(p.grad is not None for p in meta.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in meta.parameters())


def test_a_foreign_or_mismatched_state_dict_is_refused():
    _, _, opt = _setup()
    with pytest.raises(ValueError, match="MetaAuxiliaryOptimizer.state_dict"):
        opt.load_state_dict(opt.meta_optimizer.state_dict())
    _, _, other = _setup(mode="first_order")
    with pytest.raises(ValueError, match="mode='first_order'"):
        opt.load_state_dict(other.state_dict())
