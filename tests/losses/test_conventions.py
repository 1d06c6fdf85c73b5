"""The loss protocol, checked on every loss of :mod:`qualcl.losses` (as timm tests every model it lists).

For each case of :mod:`losscases`: the family's signature, reductions that agree with each other,
weights of ones equal to no weights, an attached zero when nothing is selected, bad input refused
with the argument's name, and — on two gloo processes holding unequal halves of the batch — the
one-process value and input gradients (float64) with ``gather_distributed=True``.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.distributed as dist

import qualcl.losses
from gloo import run_on_ranks
from losscases import ALL, LossCase, split_rows
from qualcl.distributed import rank
from qualcl.losses.base import FAMILIES, Loss

CASES = {case.name: case for case in ALL}
WORLD = 2


def _exported_losses() -> list[type]:
    return [
        obj
        for name in qualcl.losses.__all__
        if isinstance(obj := getattr(qualcl.losses, name), type)
        and issubclass(obj, torch.nn.Module)
        and obj is not Loss
    ]


def test_every_loss_follows_the_protocol_and_has_a_case():
    exported = _exported_losses()
    assert exported, "qualcl.losses exports no loss"
    not_protocol = [cls.__name__ for cls in exported if not issubclass(cls, Loss)]
    assert not not_protocol, f"losses outside the protocol: {not_protocol}"
    covered = {case.loss for case in ALL}
    missing = [cls.__name__ for cls in exported if cls not in covered]
    assert not missing, f"losses without a convention case in tests/losscases: {missing}"


def _weights(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.25


def _leaves(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.clone().requires_grad_(t.is_floating_point()) for t in rows]


@pytest.mark.parametrize("name", list(CASES))
def test_family_signature(name):
    case = CASES[name]
    cls = case.loss
    assert cls.family in FAMILIES, f"{cls.__name__}.family = {cls.family!r}"
    params = list(inspect.signature(cls.forward).parameters)[1:]
    leading = FAMILIES[cls.family]
    assert tuple(params[: len(leading)]) == leading[: len(params)], f"{cls.__name__}.forward{tuple(params)}"
    assert "weights" in params, f"{cls.__name__}.forward takes no weights"
    init = inspect.signature(cls.__init__).parameters
    assert "reduction" in init and "gather_distributed" in init


@pytest.mark.parametrize("name", list(CASES))
def test_reductions_agree_and_weights_of_ones_are_no_weights(name):
    case = CASES[name]
    rows = case.inputs()
    n = rows[0].shape[0]
    w = _weights(n)
    values = {r: case.call(case.build(reduction=r), rows, w) for r in ("none", "sum", "mean")}
    assert values["none"].shape == (n,), f"reduction='none' gave shape {tuple(values['none'].shape)}"
    torch.testing.assert_close(values["sum"], values["none"].sum())
    if case.mean_from_none is not None:
        torch.testing.assert_close(values["mean"], case.mean_from_none(values["none"], w, rows))
    ones = torch.ones(n, dtype=torch.float64)
    for reduction in ("none", "sum", "mean"):
        loss = case.build(reduction=reduction)
        torch.testing.assert_close(case.call(loss, rows, ones), case.call(loss, rows, None))


@pytest.mark.parametrize("name", list(CASES))
def test_nothing_selected_gives_an_attached_zero(name):
    case = CASES[name]
    rows = _leaves(case.inputs())
    for reduction in ("mean", "sum"):
        value = case.call(case.build(reduction=reduction), rows, torch.zeros(rows[0].shape[0], dtype=torch.float64))
        assert value.shape == () and float(value.detach()) == 0.0 and value.requires_grad
        value.backward()
        for t in rows:
            if t.grad is not None:
                assert bool(torch.isfinite(t.grad).all()) and float(t.grad.abs().max()) == 0.0
                t.grad = None


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_with_the_argument_name(name):
    case = CASES[name]
    rows = case.inputs()
    argument = case.bad_argument or FAMILIES[case.loss.family][0]
    bad = [t.clone() for t in rows]
    bad[0].view(-1)[0] = float("nan") if bad[0].is_floating_point() else -(10**6)
    with pytest.raises((ValueError, TypeError), match=argument):
        case.call(case.build(), bad, None)
    with pytest.raises((ValueError, TypeError), match="weights"):
        case.call(case.build(), rows, torch.ones(rows[0].shape[0] + 1, dtype=torch.float64))
    with pytest.raises((ValueError, TypeError), match="weights"):
        case.call(case.build(), rows, -torch.ones(rows[0].shape[0], dtype=torch.float64))
    with pytest.raises(ValueError, match="reduction"):
        case.build(reduction="average")


# ------------------------------------------------------------------------------------------ DDP
def _one_case(case: LossCase, reduction: str, weighted: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Local slices with gathering vs one process on everything: value (mean over ranks) and gradients."""
    rows = case.inputs(seed=3)
    n = rows[0].shape[0]
    w = _weights(n, seed=4) if weighted else None
    me = rank()
    local = _leaves([t[split_rows(t.shape[0], me)] for t in rows])
    local_w = None if w is None else w[split_rows(n, me)]
    value = case.call(case.build(reduction=reduction, gather_distributed=True), local, local_w)
    value.backward()
    full = _leaves(rows)
    single = case.call(case.build(reduction=reduction, gather_distributed=False), full, w)
    single.backward()
    mean = value.detach().clone()
    dist.all_reduce(mean)
    out = {"value (mean over ranks)": (mean / WORLD, single.detach())}
    for i, (lt, ft) in enumerate(zip(local, full, strict=True)):
        if ft.grad is None and lt.grad is None:
            continue
        got = torch.zeros_like(lt) if lt.grad is None else lt.grad / WORLD  # DDP averages over ranks
        want = torch.zeros_like(lt) if ft.grad is None else ft.grad[split_rows(ft.shape[0], me)]
        out[f"grad of input {i}"] = (got, want)
    return out


def _work() -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    results = {}
    for name, case in CASES.items():
        results[f"{name}/mean, weighted"] = _one_case(case, "mean", True)
        results[f"{name}/sum"] = _one_case(case, "sum", False)
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_on_ranks(_work, WORLD, tmp_path_factory.mktemp("conventions"))


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(CASES))
def test_two_gloo_ranks_equal_one_process(two_ranks, name):
    for r, per_rank in enumerate(two_ranks):
        for key in (f"{name}/mean, weighted", f"{name}/sum"):
            for what, (got, want) in per_rank[key].items():
                torch.testing.assert_close(
                    got, want, msg=lambda m, r=r, key=key, what=what: f"rank {r}, {key}, {what}: {m}"
                )
