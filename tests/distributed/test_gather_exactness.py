"""2 gloo processes on CPU must reproduce one process on the concatenated batch: loss and gradients."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gloo import run_on_ranks
from qualcl.distributed import gather_no_grad, gather_with_grad, rank, world_size
from qualcl.losses import ClipLoss, InfoNCE

pytestmark = pytest.mark.distributed
WORLD = 2
SIZES = [3, 5]  # unequal local batches: exactness must not rely on equal splits
D = 6

Pairs = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _global(seed: int, n: int, d: int = D) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _local(x: torch.Tensor, sizes: list[int] = SIZES) -> torch.Tensor:
    start = sum(sizes[: rank()])
    return x[start : start + sizes[rank()]]


def _leaf_case(
    loss_builder: Callable[[bool], torch.nn.Module],
    call: Callable[..., torch.Tensor],
    tensors: list[torch.Tensor],
) -> Pairs:
    """Compare (gathered loss on local slices) with (single loss on everything), values and grads."""
    local = [_local(t).clone().requires_grad_() for t in tensors]
    loss = call(loss_builder(True), *local)
    loss.backward()
    full = [t.clone().requires_grad_() for t in tensors]
    single = call(loss_builder(False), *full)
    single.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    out: Pairs = {"loss (mean over ranks)": (mean_loss / WORLD, single.detach())}
    for i, (lt, ft) in enumerate(zip(local, full, strict=True)):
        # each rank's grad is the sum over ranks' losses; DDP divides by the world size
        out[f"grad[{i}]"] = (lt.grad / WORLD, _local(ft.grad))
    return out


def _ddp_case(
    loss_builder: Callable[[bool], torch.nn.Module], call: Callable[..., torch.Tensor], n_inputs: int
) -> Pairs:
    """A DDP-wrapped encoder: averaged parameter gradients must equal the single-process ones."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(D, D).double()
    reference_encoder = copy.deepcopy(encoder)
    ddp = DistributedDataParallel(encoder)
    inputs = [_global(100 + i, sum(SIZES)) for i in range(n_inputs)]
    call(loss_builder(True), *[ddp(_local(x)) for x in inputs]).backward()
    call(loss_builder(False), *[reference_encoder(x) for x in inputs]).backward()
    return {
        f"param {name}": (p.grad, q.grad)
        for (name, p), q in zip(encoder.named_parameters(), reference_encoder.parameters(), strict=True)
    }


def _cases() -> dict[str, Callable[[], Pairs]]:
    info_nce = lambda g: InfoNCE(temperature=0.2, gather_distributed=g)
    clip = lambda g: ClipLoss(init_logit_scale=4.0, gather_distributed=g)
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 1, 0])

    def clip_with_labels(loss, a, b):
        n = a.shape[0]
        return loss(a, b, labels=_local(labels) if n != len(labels) else labels)

    def info_nce_weighted(loss, q, p, c):
        full = q.shape[0] == sum(SIZES)
        w = torch.linspace(0.1, 2.0, sum(SIZES), dtype=torch.float64)
        return loss(q, p, c, top_k=4, weights=w if full else _local(w))

    def gather_identity() -> Pairs:
        x = _global(7, sum(SIZES)).requires_grad_()
        local = _local(x.detach()).clone().requires_grad_()
        gathered, offset = gather_with_grad(local)
        coefficients = _global(8, sum(SIZES))
        (gathered * coefficients).sum().backward()
        return {
            "gathered": (gathered.detach(), x.detach()),
            "offset": (torch.tensor(offset), torch.tensor(sum(SIZES[: rank()]))),
            "grad": (local.grad, _local(coefficients) * WORLD),
            "no-grad gather": (gather_no_grad(_local(torch.arange(8))), torch.arange(8)),
            "world": (torch.tensor(world_size()), torch.tensor(WORLD)),
        }

    return {
        "gather_with_grad": gather_identity,
        "info_nce_in_batch": lambda: _leaf_case(info_nce, lambda l, q, p: l(q, p), [_global(1, 8), _global(2, 8)]),
        "info_nce_negatives_top_k_weights": lambda: _leaf_case(
            info_nce, info_nce_weighted, [_global(3, 8), _global(4, 8), _global(5, 8)]
        ),
        "info_nce_ddp": lambda: _ddp_case(info_nce, lambda l, q, p: l(q, p), 2),
        "clip": lambda: _leaf_case(clip, lambda l, a, b: l(a, b), [_global(6, 8), _global(9, 8)]),
        "clip_labels": lambda: _leaf_case(clip, clip_with_labels, [_global(10, 8), _global(11, 8)]),
        "clip_ddp_labels": lambda: _ddp_case(clip, clip_with_labels, 2),
    }


CASE_NAMES = list(_cases())


def _work() -> dict:
    return {name: case() for name, case in _cases().items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_on_ranks(_work, WORLD, tmp_path_factory.mktemp("gloo"))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_two_processes_equal_one_process(results, case):
    for r, per_rank in enumerate(results):
        for what, (got, want) in per_rank[case].items():
            torch.testing.assert_close(got, want, msg=lambda m, r=r, what=what: f"rank {r}, {what}: {m}")


def test_single_process_fallbacks():
    x = torch.randn(3, 2)
    gathered, offset = gather_with_grad(x)
    assert gathered is x and offset == 0
    assert gather_no_grad(x) is x
    assert (rank(), world_size()) == (0, 1)
