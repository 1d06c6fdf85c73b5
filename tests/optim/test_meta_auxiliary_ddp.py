"""MetaAuxiliaryOptimizer under DDP equals one process on the concatenated batch (2 gloo processes on CPU).

Statement tested: two ranks holding 3/8 and 5/8 of a float64 batch, the task model (and the meta
model) wrapped in DistributedDataParallel, take one meta step (each mode) and then one DDP task
step. The losses follow qualcl's loss protocol (per-sample losses with ``gather_distributed=True``;
the entropy regulariser of the batch-averaged targets takes the mean over every rank's rows), so
that averaging gradients over ranks is exact for unequal shards. On every rank the meta-parameters
``φ``, the task parameters ``θ`` (unchanged by the meta step, then stepped), every BatchNorm running
statistic and the logged values must equal those of one process that runs the same code on the
whole batch with plain BatchNorm. ``sync_bn`` converts the BatchNorm of both models to
:class:`qualcl.distributed.SyncBatchNorm`, so the second-order step differentiates twice through it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _meta_problem import ENTROPY_WEIGHT, N_D, N_Q, L, batch, models
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from gloo import run_on_ranks
from qualcl.distributed import all_reduce_sum, convert_sync_batchnorm, is_distributed, rank
from qualcl.functional import batch_entropy
from qualcl.heads import JointEncodingMask
from qualcl.losses import FocalLoss
from qualcl.optim import MetaAuxiliaryOptimizer

pytestmark = pytest.mark.distributed
WORLD = 2
SIZES = [3, 5]  # unequal shards of one batch of 8
MODES = ["second_order", "first_order", "finite_difference"]
CASES = [(mode, bn) for mode in MODES for bn in ("no_bn", "sync_bn")]
INNER_LR, WEIGHT_DECAY = 0.5, 0.05

Values = dict[str, Tensor]


def _models(bn: str) -> tuple[nn.Module, nn.Module]:
    task, meta = models(3, meta_bn=bn == "sync_bn")
    if bn == "no_bn":
        task.bn = nn.Identity()
    elif is_distributed():
        task = convert_sync_batchnorm(task, backend="qualcl")
        meta = convert_sync_batchnorm(meta, backend="qualcl")
    return task, meta


def _shard() -> tuple[Tensor, ...]:
    """This rank's rows of the batch (all of it on one process)."""
    whole = batch(seed=5, n=sum(SIZES))
    if not is_distributed():
        return whole
    start = sum(SIZES[: rank()])
    return tuple(t[start : start + SIZES[rank()]] for t in whole)


def _entropy_of_mean(probs: Tensor) -> Tensor:
    """``H(mean_i p_i)`` over the rows of every rank (the same value on every rank, gradients to all)."""
    total = all_reduce_sum(probs.sum(0))
    count = all_reduce_sum(probs.new_tensor(float(probs.shape[0])))
    return batch_entropy((total / count).unsqueeze(0))


def _losses(meta: nn.Module, x: Tensor, y_d: Tensor, y_q: Tensor):
    """MKCNet's inner / outer losses and its task-step loss, on the loss protocol."""
    mask = JointEncodingMask(N_D, N_Q, L)
    joint = mask.encode(y_d, y_q)
    ce = FocalLoss(gamma=0.0, gather_distributed=True)
    focal = FocalLoss(gamma=2.0, gather_distributed=True)

    def targets() -> Tensor:
        return mask.masked_softmax(meta(x), joint)

    def inner(forward) -> Tensor:
        main, aux = forward(x)
        return ce(main, y_d) + focal(aux, targets()) / L

    def outer(forward) -> Tensor:
        main, _ = forward(x)
        return ce(main, y_d) - ENTROPY_WEIGHT * _entropy_of_mean(targets())

    def task_loss(task: nn.Module) -> Tensor:
        with torch.no_grad():
            target = targets()
        main, aux = task(x)
        return ce(main, y_d) + focal(aux, target) / L

    return inner, outer, task_loss


def _run(mode: str, bn: str) -> Values:
    """One meta step and one task step on this process's rows; every value to compare, by name."""
    task, meta = _models(bn)
    theta0 = copy.deepcopy(task.state_dict())
    wrapped_task = DistributedDataParallel(task) if is_distributed() else task
    wrapped_meta = DistributedDataParallel(meta) if is_distributed() else meta
    meta_optimizer = torch.optim.SGD(meta.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    task_optimizer = torch.optim.SGD(task.parameters(), lr=0.1, momentum=0.9)
    opt = MetaAuxiliaryOptimizer(
        wrapped_task, wrapped_meta, meta_optimizer, INNER_LR, weight_decay=WEIGHT_DECAY, mode=mode
    )
    inner, outer, task_loss = _losses(opt.meta_module, *_shard())
    out: Values = {f"stats {k}": v for k, v in opt.step(inner, outer).items()}
    out.update({f"meta grad {n}": p.grad.clone() for n, p in meta.named_parameters()})
    out.update({f"after meta step: phi {n}": p.detach().clone() for n, p in meta.named_parameters()})
    # the meta step leaves θ and the task buffers as they were
    out.update({f"after meta step: task {n}": v.clone() for n, v in task.state_dict().items()})
    assert all(torch.equal(v, theta0[n]) for n, v in task.state_dict().items())

    task_optimizer.zero_grad()
    task_loss(wrapped_task).backward()
    task_optimizer.step()
    out.update({f"after task step: task {n}": v.detach().clone() for n, v in task.state_dict().items()})
    out.update({f"after task step: meta {n}": v.detach().clone() for n, v in meta.state_dict().items()})
    return out


def _work() -> dict:
    return {case: _run(*case) for case in CASES}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_on_ranks(_work, WORLD, tmp_path_factory.mktemp("gloo_meta_ddp"))


@pytest.mark.parametrize("case", CASES, ids=[f"{m}-{bn}" for m, bn in CASES])
def test_ddp_meta_step_equals_one_process_on_the_whole_batch(results, case):
    want = _run(*case)  # this process has no process group: plain BatchNorm, plain means
    for r, per_rank in enumerate(results):
        got = per_rank[case]
        assert got.keys() == want.keys()
        for what in want:
            torch.testing.assert_close(
                got[what], want[what], rtol=1e-10, atol=1e-12, msg=lambda m, r=r, what=what: f"rank {r}, {what}: {m}"
            )


def test_ranks_agree_exactly(results):
    """Every rank holds the same φ after the meta step (one all-reduce result), not just close ones."""
    for case in CASES:
        for what, value in results[0][case].items():
            if what.startswith("after meta step: phi"):
                assert torch.equal(results[1][case][what], value), (case, what)
