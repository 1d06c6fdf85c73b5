"""Multi-level InfoNCE (with the self-paced miner), NT-Xent and one CoMCL pre-training step on 2 gloo ranks.

Each equals one process on the concatenated batch: the loss averaged over ranks, and the gradients
after DDP's averaging (input gradients: the rank's own rows, divided by the world size).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from gloo import run_on_ranks
from qualcl.heads import ProjectionHead
from qualcl.losses import MultiLevelInfoNCE, NTXentLoss
from qualcl.models import build_encoder
from qualcl.recipes.comcl.modules import ContrastivePretraining
from qualcl.samplers import CosineCountSchedule, SelfPacedHardNegativeMiner

pytestmark = pytest.mark.distributed
WORLD, D = 2, 6
#: Level ids of each rank's rows (rank 1 has no LQ_H row: a pair with no local negative-level rows).
LEVELS = [torch.tensor([0, 0, 1, 2, 3, 1, 2]), torch.tensor([0, 1, 1, 2, 2])]


def _split(x: torch.Tensor) -> torch.Tensor:
    sizes = [len(v) for v in LEVELS]
    start = sum(sizes[: dist.get_rank()])
    return x[start : start + sizes[dist.get_rank()]]


def _miner(threshold: str, gather: bool) -> SelfPacedHardNegativeMiner:
    return SelfPacedHardNegativeMiner(CosineCountSchedule(None, 10), threshold=threshold, gather_distributed=gather)


def _multi_level(gather: bool, **kwargs) -> MultiLevelInfoNCE:
    return MultiLevelInfoNCE(temperature=0.3, gather_distributed=gather, **kwargs)


CASES = {
    "plain": lambda g: _multi_level(g),
    "both_views_weighted": lambda g: _multi_level(g, negatives_from="both", pair_weights=(1.0, 0.5, 2.0)),
    "self_paced_quantile": lambda g: _multi_level(g, miner=_miner("quantile", g)),
    "self_paced_literal": lambda g: _multi_level(g, miner=_miner("literal", g)),
    "binary_levels": lambda g: _multi_level(g, pairs=(("lesion", "healthy"),), level_names=("lesion", "healthy")),
    "nt_xent": lambda g: NTXentLoss(temperature=0.3, gather_distributed=g),
}


def _call(loss_fn, z1, z2, levels, name):
    if name == "nt_xent":
        return loss_fn(z1, z2)
    if name == "binary_levels":
        levels = (levels >= 2).long()
    return loss_fn(z1, z2, levels, step=3)


def _loss_case(name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    n = sum(len(v) for v in LEVELS)
    views = [torch.randn(n, D, generator=g, dtype=torch.float64) for _ in range(2)]
    levels = torch.cat(LEVELS)
    local = [_split(v).clone().requires_grad_() for v in views]
    loss = _call(CASES[name](True), *local, _split(levels), name)
    loss.backward()
    full = [v.clone().requires_grad_() for v in views]
    single = _call(CASES[name](False), *full, levels, name)
    single.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    pairs = [(mean / WORLD, single.detach())]
    pairs += [(lv.grad / WORLD, _split(fv.grad)) for lv, fv in zip(local, full, strict=True)]
    return pairs


def _module(gather: bool) -> ContrastivePretraining:
    torch.manual_seed(0)  # the same initial weights on every rank and in the single process
    encoder = build_encoder("resnet10").double().eval()  # BatchNorm on running statistics: see the docstring
    loss = MultiLevelInfoNCE(temperature=0.07, miner=_miner("quantile", gather), gather_distributed=gather)
    module = ContrastivePretraining(
        encoder, ProjectionHead((512, 512, 32)).double(), loss, lr=1e-3, weight_decay=0, max_steps=10
    )
    module.log = lambda *args, **kwargs: None
    return module


def _pretrain_step() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One CoMCL step (encoder, head, multi-level loss, self-paced miner) vs one process on both batches.

    On the CPU, torch's SyncBatchNorm does not run, so the encoder's BatchNorm uses its running
    statistics here (``eval()``); recipes on GPUs synchronise it (``trainer.sync_batchnorm``).
    """
    g = torch.Generator().manual_seed(11)
    n = sum(len(v) for v in LEVELS)
    views = [torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2)]
    levels = torch.cat(LEVELS)
    ddp = _module(True)
    loss = ddp.training_step((_split(views[0]), _split(views[1]), _split(levels)), 0)
    loss.backward()
    single = _module(False)
    want = single.training_step((views[0], views[1], levels), 0)
    want.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    pairs = [(mean / WORLD, want.detach())]
    for p, q in zip(ddp.parameters(), single.parameters(), strict=True):
        grad = p.grad.clone()
        dist.all_reduce(grad)  # what DDP does to parameter gradients: the mean over ranks
        pairs.append((grad / WORLD, q.grad))
    return pairs


def _work() -> dict:
    out = {name: _loss_case(name) for name in CASES}
    out["comcl_pretrain_step"] = _pretrain_step()
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_on_ranks(_work, WORLD, tmp_path_factory.mktemp("gloo_contrastive"))


@pytest.mark.parametrize("case", [*CASES, "comcl_pretrain_step"])
def test_two_processes_equal_one_process_on_the_concatenated_batch(results, case):
    for per_rank in results:
        for got, want in per_rank[case]:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_the_miner_threshold_is_global():
    """Without gathering, the quantile of each rank's anchors differs from the global one (the test can fail)."""
    torch.manual_seed(0)
    local = SelfPacedHardNegativeMiner(CosineCountSchedule(None, 10), threshold="quantile")
    losses = torch.tensor([0.1, 0.2, 5.0, 6.0])
    selected, _ = local._select(losses[:2], 4, 0)  # rank 0's half alone keeps one of its two anchors
    assert selected.tolist() == [True, False]
    pooled, _ = local._select(losses, 4, 0)  # over all four anchors it keeps both of rank 0's
    assert pooled.tolist()[:2] == [True, True]
