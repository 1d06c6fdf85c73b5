"""MetaAuxiliaryOptimizer: exact meta gradient (float64 finite differences), approximations, invariants."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _meta_problem import (
    batch,
    central_differences,
    closures,
    models,
    pseudo_update,
    reference_losses,
    reference_outer_at_pseudo_update,
)
from torch import nn

from qualcl.optim import MetaAuxiliaryOptimizer

LR = 0.5  # a large pseudo step so that the second-order term matters
META_LR = 0.1
MODES = ["second_order", "first_order", "finite_difference"]


def _step(mode: str, *, lr=LR, wd: float = 0.0, seed: int = 0, meta_bn: bool = False, **kw):
    """Run one meta step on fresh models; return (task, meta, phi before, grads, stats)."""
    task, meta = models(seed, meta_bn)
    x, y_d, y_q = batch()
    phi0 = [p.detach().clone() for p in meta.parameters()]
    opt = MetaAuxiliaryOptimizer(
        task,
        meta,
        torch.optim.SGD(meta.parameters(), lr=META_LR),
        inner_lr=lr,
        weight_decay=wd,
        mode=mode,
        **kw,
    )
    stats = opt.step(*closures(meta, x, y_d, y_q))
    grads = [p.grad.clone() for p in meta.parameters()]
    return task, meta, phi0, grads, stats


def _reference_meta_grad(lr: float, wd: float):
    task, meta = models(0)
    x, y_d, y_q = batch()
    phi = (meta.fc.weight.detach(), meta.fc.bias.detach())
    return central_differences(lambda p: reference_outer_at_pseudo_update(task, p, x, y_d, y_q, lr, wd), phi)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_second_order_equals_central_differences(wd):
    _, meta, phi0, grads, stats = _step("second_order", wd=wd)
    want = _reference_meta_grad(LR, wd)
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)
    # the optimizer stepped on exactly that gradient (plain SGD)
    for p, p0, g in zip(meta.parameters(), phi0, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - META_LR * g)
    ref_norm = math.sqrt(sum(float((g**2).sum()) for g in want))
    assert stats["meta_grad_norm"].item() == pytest.approx(ref_norm, rel=1e-5)
    assert stats["inner_lr"].item() == pytest.approx(LR)


def test_logged_losses_match_reference():
    task, meta = models(0)
    x, y_d, y_q = batch()
    theta = {n: p.detach() for n, p in task.named_parameters()}
    inner, outer = reference_losses(theta, (meta.fc.weight.detach(), meta.fc.bias.detach()), x, y_d, y_q)
    theta_tilde = pseudo_update(theta, inner, LR, 0.0, set(theta))
    stats = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.0), LR).step(
        *closures(meta, x, y_d, y_q)
    )
    assert stats["inner_loss"].item() == pytest.approx(inner(theta).item(), rel=1e-10)
    assert stats["outer_loss"].item() == pytest.approx(outer(theta_tilde).item(), rel=1e-10)
    t = {n: v.clone().requires_grad_() for n, v in theta.items()}
    g_norm = torch.linalg.vector_norm(
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(inner(t), list(t.values()))])
    )
    assert stats["inner_grad_norm"].item() == pytest.approx(g_norm.item(), rel=1e-6)
    assert set(stats) == {"inner_loss", "outer_loss", "inner_grad_norm", "meta_grad_norm", "inner_lr"}
    assert all(v.ndim == 0 and not v.requires_grad for v in stats.values())


def _relative_error(a, b):
    num = math.sqrt(sum(float(((x - y) ** 2).sum()) for x, y in zip(a, b, strict=True)))
    return num / math.sqrt(sum(float((y**2).sum()) for y in b))


def test_finite_difference_approximates_second_order():
    exact = _step("second_order", wd=0.05)[3]
    coarse = _step("finite_difference", wd=0.05, fd_radius=1e-2)[3]
    fine = _step("finite_difference", wd=0.05, fd_radius=1e-4)[3]
    assert _relative_error(coarse, exact) < 1e-3
    assert _relative_error(fine, exact) < 1e-6
    assert _relative_error(fine, exact) < _relative_error(coarse, exact)


def _mixed_term(lr: float):
    """−α ∇φ⟨∇θ L_inner(θ, φ), d⟩ with d = ∇θ̃ L_outer(θ̃): the term first_order drops."""
    task, meta = models(0)
    x, y_d, y_q = batch()
    theta = {n: p.detach() for n, p in task.named_parameters()}
    phi = (meta.fc.weight.detach().clone().requires_grad_(), meta.fc.bias.detach().clone().requires_grad_())
    inner, outer = reference_losses(theta, (phi[0].detach(), phi[1].detach()), x, y_d, y_q)
    stepped = pseudo_update(theta, inner, lr, 0.0, set(theta))
    theta_tilde = {n: v.clone().requires_grad_() for n, v in stepped.items()}
    d = torch.autograd.grad(outer(theta_tilde), list(theta_tilde.values()), allow_unused=True)
    d = [torch.zeros_like(v) if di is None else di for di, v in zip(d, theta_tilde.values(), strict=True)]
    inner_phi, _ = reference_losses(theta, phi, x, y_d, y_q)
    t = {n: v.clone().requires_grad_() for n, v in theta.items()}
    g = torch.autograd.grad(inner_phi(t), list(t.values()), create_graph=True)
    dot = sum((gi * di).sum() for gi, di in zip(g, d, strict=True))
    return [-lr * h for h in torch.autograd.grad(dot, phi)]


def test_first_order_is_the_direct_part_and_drops_the_mixed_term():
    first = _step("first_order")[3]
    second = _step("second_order")[3]
    # direct part: central differences of L_outer(θ̃ fixed at φ0, φ) in φ
    task, meta = models(0)
    x, y_d, y_q = batch()
    theta = {n: p.detach() for n, p in task.named_parameters()}
    phi0 = (meta.fc.weight.detach(), meta.fc.bias.detach())
    inner0, _ = reference_losses(theta, phi0, x, y_d, y_q)
    theta_tilde = pseudo_update(theta, inner0, LR, 0.0, set(theta))
    outer_at = lambda p: reference_losses(theta, p, x, y_d, y_q)[1](theta_tilde).detach()
    direct = central_differences(outer_at, phi0)
    for got, want in zip(first, direct, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    # and exact = direct + mixed term
    for s, f, m in zip(second, first, _mixed_term(LR), strict=True):
        torch.testing.assert_close(s - f, m, rtol=1e-6, atol=1e-9)


def test_first_order_without_direct_term_gives_zero_and_second_order_does_not():
    task, meta = models(0)
    x, y_d, y_q = batch()
    for mode, zero in [("first_order", True), ("second_order", False)]:
        t, m = copy.deepcopy(task), copy.deepcopy(meta)
        opt = MetaAuxiliaryOptimizer(t, m, torch.optim.SGD(m.parameters(), lr=0.1), LR, mode=mode)
        opt.step(*closures(m, x, y_d, y_q, direct=False))
        assert (all(bool((p.grad == 0).all()) for p in m.parameters())) == zero


@pytest.mark.parametrize("mode", MODES)
def test_modes_agree_when_the_inner_loss_ignores_the_meta_model(mode):
    """Without auxiliary targets in L_inner, θ̃ does not depend on φ: every mode is exact."""
    task, meta = models(0)
    x, y_d, y_q = batch()
    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.0), LR, mode=mode)
    opt.step(*closures(meta, x, y_d, y_q, aux=False))
    phi = (meta.fc.weight.detach(), meta.fc.bias.detach())
    want = central_differences(
        lambda p: reference_outer_at_pseudo_update(task, p, x, y_d, y_q, LR, 0.0, aux=False), phi
    )
    for p, w in zip(meta.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_theta_buffers_and_task_grads_unchanged(mode):
    task, meta = models(0)
    before = copy.deepcopy(task.state_dict())
    x, y_d, y_q = batch()
    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.1), LR, 0.05, mode)
    opt.step(*closures(meta, x, y_d, y_q))
    after = task.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    assert int(after["bn.num_batches_tracked"]) == 0
    assert all(p.grad is None for p in task.parameters())
    assert task.training


def test_meta_model_buffers_follow_one_inner_and_one_outer_pass_in_every_mode():
    """The two extra passes of the finite difference must not move the meta model's running stats."""
    states = []
    for mode in MODES:
        _, meta, *_ = _step(mode, meta_bn=True)
        states.append({n: b.clone() for n, b in meta.named_buffers()})
    for state in states[1:]:
        for name, value in state.items():
            torch.testing.assert_close(value, states[0][name], rtol=0, atol=0)
    assert int(states[0]["bn.num_batches_tracked"]) == 2


def test_meta_gradient_with_batch_norm_in_the_meta_model_matches_finite_difference_mode():
    exact = _step("second_order", meta_bn=True)[3]
    approx = _step("finite_difference", meta_bn=True, fd_radius=1e-4)[3]
    assert _relative_error(approx, exact) < 1e-6


def test_callable_inner_lr_follows_the_task_optimizer():
    task, meta = models(0)
    task_opt = torch.optim.SGD(task.parameters(), lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(task_opt, step_size=1, gamma=0.5)
    opt = MetaAuxiliaryOptimizer(
        task, meta, torch.optim.SGD(meta.parameters(), lr=0.0), lambda: task_opt.param_groups[0]["lr"]
    )
    x, y_d, y_q = batch()
    seen = []
    for _ in range(3):
        seen.append(opt.step(*closures(meta, x, y_d, y_q))["inner_lr"].item())
        task_opt.step()
        sched.step()
    assert seen == pytest.approx([0.4, 0.2, 0.1])
    assert opt.current_inner_lr() == pytest.approx(0.05)


def test_zero_inner_lr_leaves_only_the_direct_part():
    zero = _step("second_order", lr=lambda: 0.0)[3]
    second = _step("second_order")[3]
    direct_at_theta = _step("first_order", lr=0.0)[3]
    for z, d in zip(zero, direct_at_theta, strict=True):
        torch.testing.assert_close(z, d, rtol=1e-12, atol=1e-14)
    assert _relative_error(zero, second) > 1e-3  # with α > 0 the mixed term is not negligible here


def test_frozen_task_parameters_are_used_but_not_pseudo_updated():
    task, meta = models(0)
    task.main.bias.requires_grad_(False)
    x, y_d, y_q = batch()
    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.0), LR)
    opt.step(*closures(meta, x, y_d, y_q))
    phi = (meta.fc.weight.detach(), meta.fc.bias.detach())
    want = central_differences(lambda p: reference_outer_at_pseudo_update(task, p, x, y_d, y_q, LR, 0.0), phi)
    for p, w in zip(meta.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-6, atol=1e-9)


def test_stale_meta_grads_are_overwritten_and_wrappers_unwrapped():
    task, meta = models(0)
    for p in meta.parameters():
        p.grad = torch.full_like(p, 123.0)
    wrapped = nn.DataParallel(task)
    opt = MetaAuxiliaryOptimizer(wrapped, meta, torch.optim.SGD(meta.parameters(), lr=0.0), LR)
    assert opt.task_module is task and opt.meta_module is meta
    x, y_d, y_q = batch()
    opt.step(*closures(meta, x, y_d, y_q))
    exact = _step("second_order")[3]
    for p, e in zip(meta.parameters(), exact, strict=True):
        torch.testing.assert_close(p.grad, e)


def test_task_forward_passes_keyword_arguments():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x, *, scale=1.0):
            return self.lin(x) * scale

    task, meta = Scaled().double(), nn.Linear(2, 2).double()
    x = torch.randn(3, 2, dtype=torch.float64)
    seen = []

    def inner(forward):
        seen.append(forward(x, scale=2.0))
        return ((forward(x, scale=2.0) - meta(x)) ** 2).mean()

    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.1), 0.1)
    opt.step(inner, lambda forward: forward(x).pow(2).mean())
    torch.testing.assert_close(seen[0], task(x) * 2.0)


# ---------------------------------------------------------------- bad input


def _opt(**kw):
    task, meta = models(0)
    args = {
        "task_model": task,
        "meta_model": meta,
        "meta_optimizer": torch.optim.SGD(meta.parameters(), lr=0.1),
    }
    args["inner_lr"] = 0.1
    args.update(kw)
    return MetaAuxiliaryOptimizer(**args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "third_order"}, ValueError, "mode"),
        ({"inner_lr": -0.1}, ValueError, "inner_lr"),
        ({"inner_lr": float("nan")}, ValueError, "inner_lr"),
        ({"inner_lr": True}, TypeError, "inner_lr"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay"),
        ({"fd_radius": 0.0}, ValueError, "fd_radius"),
        ({"task_model": "net"}, TypeError, "task_model"),
        ({"meta_model": None}, TypeError, "meta_model"),
        ({"meta_optimizer": object()}, TypeError, "meta_optimizer"),
        (
            {"meta_optimizer": torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)},
            ValueError,
            "meta_optimizer",
        ),
        ({"task_model": nn.ReLU()}, ValueError, "task_model"),
        ({"meta_model": nn.ReLU()}, ValueError, "meta_model"),
        ({"sync_meta_grads": "yes"}, TypeError, "sync_meta_grads"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _opt(**kwargs)


def test_shared_parameters_are_refused():
    shared = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="disjoint"):
        MetaAuxiliaryOptimizer(shared, shared, torch.optim.SGD(shared.parameters(), lr=0.1), 0.1)


def test_bad_closures_and_lr_at_step():
    task, meta = models(0)
    x, y_d, y_q = batch()
    inner, outer = closures(meta, x, y_d, y_q)
    opt = _opt(task_model=task, meta_model=meta, meta_optimizer=torch.optim.SGD(meta.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="inner_loss_fn"):
        opt.step(lambda f: 1.0, outer)
    with pytest.raises(ValueError, match="outer_loss_fn"):
        opt.step(inner, lambda f: f(x)[0])
    with pytest.raises(ValueError, match="outer_loss_fn.*non-finite"):
        opt.step(inner, lambda f: f(x)[0].sum() * float("nan"))
    with pytest.raises(TypeError, match="inner_loss_fn"):
        opt.step(None, outer)
    opt.inner_lr = lambda: -1.0
    with pytest.raises(ValueError, match="inner_lr"):
        opt.step(inner, outer)


def test_meta_model_untouched_when_a_step_fails():
    task, meta = models(0)
    before = copy.deepcopy(meta.state_dict())
    x, y_d, y_q = batch()
    inner, _ = closures(meta, x, y_d, y_q)
    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.1), 0.1)
    with pytest.raises(ValueError, match="outer_loss_fn"):
        opt.step(inner, lambda f: F.cross_entropy(f(x)[0], y_d) * float("inf"))
    for name, value in meta.state_dict().items():
        assert torch.equal(value, before[name])


def test_non_finite_meta_gradient_is_refused():
    task, meta = models(0)
    x, y_d, y_q = batch()
    inner, outer = closures(meta, x, y_d, y_q)
    before = copy.deepcopy(meta.state_dict())
    opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.1), 0.1)

    def outer_with_nan_slope(forward):  # finite value, NaN gradient in φ
        return outer(forward) + 0.0 * torch.sqrt(-meta(x).abs().sum() - 1.0).nan_to_num(0.0)

    with pytest.raises(ValueError, match="meta gradient is not finite"):
        opt.step(inner, outer_with_nan_slope)
    for name, value in meta.state_dict().items():
        assert torch.equal(value, before[name])
