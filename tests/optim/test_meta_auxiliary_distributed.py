"""MetaAuxiliaryOptimizer under DDP (2 gloo processes on CPU).

Statement tested: with the task model (and optionally the meta model) wrapped in
DistributedDataParallel, each rank running ``step`` on its own batch shard gives, on every rank,
exactly the meta-parameters that one process obtains by computing the meta gradient of each shard
separately (its own pseudo update θ̃_r), averaging them, and stepping the same optimizer. θ and the
task buffers stay unchanged, and the DDP wrapper still synchronises an ordinary task step afterwards.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _meta_problem import batch, closures, models
from torch.nn.parallel import DistributedDataParallel

from gloo import run_on_ranks
from qualcl.distributed import rank
from qualcl.optim import MetaAuxiliaryOptimizer

pytestmark = pytest.mark.distributed
WORLD = 2
SIZES = [3, 5]  # unequal shards
MODES = ["second_order", "first_order", "finite_difference"]
CASES = [(mode, wrap_meta) for mode in MODES for wrap_meta in (False, True)]

Pairs = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _shard(r: int) -> tuple[torch.Tensor, ...]:
    x, y_d, y_q = batch(seed=5, n=sum(SIZES))
    start = sum(SIZES[:r])
    return tuple(t[start : start + SIZES[r]] for t in (x, y_d, y_q))


def _meta_opt(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)


def _case(mode: str, wrap_meta: bool) -> Pairs:
    task, meta = models(3)
    task0, meta0 = copy.deepcopy(task), copy.deepcopy(meta)
    ddp_task = DistributedDataParallel(task)
    meta_model = DistributedDataParallel(meta) if wrap_meta else meta
    opt = MetaAuxiliaryOptimizer(
        ddp_task, meta_model, _meta_opt(meta.parameters()), inner_lr=0.5, weight_decay=0.05, mode=mode
    )
    x, y_d, y_q = _shard(rank())
    stats = opt.step(*closures(opt.meta_module, x, y_d, y_q))

    # single-process reference: per-shard meta gradients (no all-reduce), averaged, one optimizer step
    shard_grads = []
    for r in range(WORLD):
        t, m = copy.deepcopy(task0), copy.deepcopy(meta0)
        single = MetaAuxiliaryOptimizer(
            t, m, torch.optim.SGD(m.parameters(), lr=0.0), 0.5, 0.05, mode, sync_meta_grads=False
        )
        single.step(*closures(m, *_shard(r)))
        shard_grads.append([p.grad.clone() for p in m.parameters()])
    reference = copy.deepcopy(meta0)
    for p, *gs in zip(reference.parameters(), *shard_grads, strict=True):
        p.grad = sum(gs) / WORLD
    _meta_opt(reference.parameters()).step()

    out: Pairs = {}
    for (name, p), q in zip(meta.named_parameters(), reference.parameters(), strict=True):
        out[f"phi {name}"] = (p.detach().clone(), q.detach())
    for name, value in task0.state_dict().items():
        out[f"theta/buffer {name}"] = (task.state_dict()[name].clone(), value)
    norm = stats["meta_grad_norm"].clone()
    dist.broadcast(norm, src=0)
    out["meta_grad_norm same on all ranks"] = (stats["meta_grad_norm"], norm)

    # the DDP wrapper still averages an ordinary task step after the meta step
    def task_loss(model, r):
        xs, ys, _ = _shard(r)
        main, aux = model(xs)
        return F.cross_entropy(main, ys) + aux.pow(2).mean()

    task_loss(ddp_task, rank()).backward()
    plain = copy.deepcopy(task0)
    for r in range(WORLD):
        (task_loss(plain, r) / WORLD).backward()
    for (name, p), q in zip(task.named_parameters(), plain.parameters(), strict=True):
        out[f"task grad {name}"] = (p.grad, q.grad)
    return out


def _work() -> dict:
    return {case: _case(*case) for case in CASES}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_on_ranks(_work, WORLD, tmp_path_factory.mktemp("gloo_meta"))


@pytest.mark.parametrize("case", CASES, ids=[f"{m}-{'ddp_meta' if w else 'plain_meta'}" for m, w in CASES])
def test_ddp_meta_step_equals_averaged_single_process_meta_gradients(results, case):
    for r, per_rank in enumerate(results):
        for what, (got, want) in per_rank[case].items():
            torch.testing.assert_close(got, want, msg=lambda m, r=r, what=what: f"rank {r}, {what}: {m}")


def test_ranks_agree(results):
    for case in CASES:
        for what, (got, _) in results[0][case].items():
            if what.startswith("phi"):
                torch.testing.assert_close(results[1][case][what][0], got)


def test_averaging_differs_from_the_concatenated_batch():
    """Documented limit: the DDP meta gradient is not the meta gradient of the concatenated batch."""
    grads = []
    for shards in ([_shard(0), _shard(1)], [batch(seed=5, n=sum(SIZES))]):
        per = []
        for shard in shards:
            task, meta = models(3)
            opt = MetaAuxiliaryOptimizer(task, meta, torch.optim.SGD(meta.parameters(), lr=0.0), 0.5, 0.05)
            opt.step(*closures(meta, *shard))
            per.append(torch.cat([p.grad.reshape(-1) for p in meta.parameters()]))
        grads.append(sum(per) / len(per))
    assert not torch.allclose(grads[0], grads[1], rtol=1e-3)
