"""With ``impl="torch"`` the gathered losses still reproduce one process on the concatenated batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from gloo import run_on_ranks
from qualcl.losses import ClipLoss, InfoNCE

pytestmark = pytest.mark.distributed
WORLD, SIZES, D = 2, [3, 5], 6


def _global(seed: int) -> torch.Tensor:
    return torch.randn(sum(SIZES), D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _local(x: torch.Tensor) -> torch.Tensor:
    start = sum(SIZES[: dist.get_rank()])
    return x[start : start + SIZES[dist.get_rank()]]


def _cases() -> dict[str, tuple]:
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 1, 0])
    sup_labels = torch.tensor([0, 1, 1, 2, 0, 3, 1, 2])
    weights = torch.linspace(0.1, 2.0, sum(SIZES), dtype=torch.float64)
    return {
        "info_nce_in_batch": (lambda g: InfoNCE(0.2, gather_distributed=g, impl="torch"), 2, lambda l, t, s: l(*t)),
        "info_nce_top_k_weights": (
            lambda g: InfoNCE(0.2, gather_distributed=g, impl="torch"),
            3,
            lambda l, t, s: l(*t, top_k=4, weights=s(weights)),
        ),
        "info_nce_sum": (
            lambda g: InfoNCE(0.2, reduction="sum", gather_distributed=g, impl="torch"),
            2,
            lambda l, t, s: l(*t),
        ),
        # SupCon: label 3 is seen once (rank 1), so that row leaves the mean on every rank alike
        "supcon": (
            lambda g: InfoNCE(0.2, gather_distributed=g, impl="torch"),
            1,
            lambda l, t, s: l(t[0], labels=s(sup_labels)),
        ),
        "supcon_dense": (
            lambda g: InfoNCE(0.2, gather_distributed=g, impl="naive"),
            1,
            lambda l, t, s: l(t[0], labels=s(sup_labels), weights=s(weights)),
        ),
        "info_nce_class_level": (
            lambda g: InfoNCE(0.2, gather_distributed=g, impl="torch"),
            2,
            lambda l, t, s: l(*t, labels=s(labels)),
        ),
        "info_nce_bank_labels": (
            lambda g: InfoNCE(0.2, gather_distributed=g, impl="auto"),
            3,
            lambda l, t, s: l(*t, labels=s(labels), negative_labels=s(labels.flip(0))),
        ),
        "clip": (lambda g: ClipLoss(4.0, gather_distributed=g, impl="torch"), 2, lambda l, t, s: l(*t)),
        "clip_labels": (
            lambda g: ClipLoss(4.0, gather_distributed=g, impl="torch"),
            2,
            lambda l, t, s: l(*t, labels=s(labels)),
        ),
    }


def _run_case(build, n_inputs, call) -> list[tuple[torch.Tensor, torch.Tensor]]:
    tensors = [_global(10 * n_inputs + i) for i in range(n_inputs)]
    local = [_local(t).clone().requires_grad_() for t in tensors]
    loss = call(build(True), local, _local)
    loss.backward()
    full = [t.clone().requires_grad_() for t in tensors]
    single = call(build(False), full, lambda x: x)
    single.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    pairs = [(mean / WORLD, single.detach())]
    pairs += [(lt.grad / WORLD, _local(ft.grad)) for lt, ft in zip(local, full, strict=True)]
    return pairs


def _work() -> dict:
    return {name: _run_case(*case) for name, case in _cases().items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_on_ranks(_work, WORLD, tmp_path_factory.mktemp("gloo_kernels"))


@pytest.mark.parametrize("case", list(_cases()))
def test_fused_losses_two_processes_equal_one_process(results, case):
    for per_rank in results:
        for got, want in per_rank[case]:
            torch.testing.assert_close(got, want)
