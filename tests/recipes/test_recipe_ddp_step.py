"""Every recipe is exact under DDP: one step on 2 gloo ranks = one process on the concatenated batch.

For each recipe, its main training stage's LightningModule is built from the ``smoke`` preset (in
float64) as the recipe builds it under ``--devices 2`` (losses with ``gather_distributed``,
BatchNorm converted by :func:`qualcl.distributed.convert_sync_batchnorm`). Each rank computes the
stage's loss on its half of a fixed batch, the gradients are averaged across ranks (what DDP
does), and one step of the stage's optimiser follows. The parameters (and BatchNorm's running
statistics) must equal those of one process that takes the same step on the whole batch.

MKCNet's Meta Learner step is exact too: :class:`qualcl.optim.MetaAuxiliaryOptimizer` all-reduces
the inner gradient (autograd-aware), the finite-difference direction and the meta gradient, which
equals one process on the whole batch when the loss closures follow the loss protocol (focal losses
with ``gather_distributed``, the entropy of the targets averaged over every rank's rows,
synchronised BatchNorm). One meta step of the recipe's own module (its closures, in the
second-order and the finite-difference mode) on 2 ranks holding 3/8 and 5/8 of a float64 batch
(unequal shards, the optimiser's stated condition) must give the Meta Learner's gradient,
parameters and running statistics, and the recorded values, of one process on the whole batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from gloo import run_on_ranks
from qualcl.distributed import convert_sync_batchnorm, is_distributed, rank, world_size

pytestmark = pytest.mark.distributed
WORLD = 2
# (recipe, overrides of its smoke config): the main stage as the smoke preset trains it, and the variants
# whose losses differ (SimCLR baselines, every metric loss of mirror retrieval, both caption modes, LD's stages)
RECIPES = [
    ("comcl", ()),
    ("comcl", ("pretrain.method=simclr",)),
    ("mkcnet", ()),
    ("mirror-retrieval", ()),
    ("mirror-retrieval", ("train.metric_loss=circle",)),
    ("mirror-retrieval", ("train.metric_loss=triplet",)),
    ("fundus-mm", ()),
    ("fundus-mm", ("model.caption=autoregressive",)),
    ("local-discrimination", ()),
    ("local-discrimination", ("pretrain.method=ld_stage1",)),
    ("local-discrimination", ("pretrain.method=simclr",)),
    ("local-discrimination", ("pretrain.method=dense",)),
]

# (module, optimiser, loss of a batch) and the fixed global batch, split by rows
Built = tuple[nn.Module, torch.optim.Optimizer, Callable[[Any], Tensor]]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _optimizer(configured: Any) -> torch.optim.Optimizer:
    """The (first) optimiser of ``configure_optimizers()``."""
    if isinstance(configured, dict):
        configured = configured["optimizer"]
    if isinstance(configured, (list, tuple)):
        configured = configured[0]
        if isinstance(configured, (list, tuple)):
            configured = configured[0]
    assert isinstance(configured, torch.optim.Optimizer)
    return configured


def _trainer(devices: int) -> dict[str, Any]:
    return {"trainer": {"devices": devices, "accelerator": "cpu", "progress": False}}


def _comcl(devices: int, overrides: tuple[str, ...]) -> tuple[Built, tuple[Tensor, ...]]:
    from qualcl.models import build_encoder
    from qualcl.recipes.comcl.recipe import COMCL, pretraining_module

    config = COMCL.config("smoke", overrides=[f"trainer.devices={devices}", *overrides])
    p = config.pretrain
    module = pretraining_module(config, build_encoder(config.backbone)).double()
    n = 4 * p.per_level
    g = _generator(1)
    views = (torch.randn(n, 3, p.patch_size, p.patch_size, generator=g, dtype=torch.float64) for _ in range(2))
    levels = torch.arange(4).repeat_interleave(p.per_level)[torch.randperm(n, generator=g)]
    batch = (*views, levels)
    return (module, _optimizer(module.configure_optimizers()), lambda b: module.training_step(b, 0)), batch


def _mkcnet(devices: int, overrides: tuple[str, ...]) -> tuple[Built, tuple[Tensor, ...]]:
    from qualcl.recipes.mkcnet.model import build_meta_learner, build_task_net
    from qualcl.recipes.mkcnet.modules import MkcnetTraining
    from qualcl.recipes.mkcnet.recipe import MKCNET
    from qualcl.recipes.modules import gathering

    config = MKCNET.config("smoke", overrides=[f"trainer.devices={devices}", *overrides])
    n_d, n_q = 3, 3
    c, s = config.data.channels, config.data.image_size
    module = MkcnetTraining(
        build_task_net(config.model, c, n_d, n_q),
        build_meta_learner(config.model, c, n_d, n_q),
        config.train,
        slice_length=config.model.slice_length,
        mask_by=config.model.mask_by,
        gather_distributed=gathering(config.trainer),
    ).double()
    n, g = config.train.batch_size, _generator(2)
    batch = (
        torch.randn(n, c, s, s, generator=g, dtype=torch.float64),
        torch.randint(0, n_d, (n,), generator=g),
        torch.randint(0, n_q, (n,), generator=g),
    )
    optimizer = _optimizer(module.configure_optimizers())  # the Task Net's SGD
    return (module, optimizer, lambda b: module.task_step_loss(*b)[0]), batch


def _mirror(devices: int, overrides: tuple[str, ...]) -> tuple[Built, tuple[Tensor, ...]]:
    from qualcl.recipes.mirror_retrieval.model import MirrorRetrievalNet
    from qualcl.recipes.mirror_retrieval.modules import RetrievalTraining
    from qualcl.recipes.mirror_retrieval.recipe import MIRROR_RETRIEVAL

    config = MIRROR_RETRIEVAL.config("smoke", overrides=[f"trainer.devices={devices}", *overrides])
    module = RetrievalTraining(MirrorRetrievalNet(config.model, num_grades=5, in_chans=3), config.train, k=5).double()
    n, s, g = config.train.batch_size, config.data.image_size, _generator(3)
    batch = (
        torch.rand(n, 3, s, s, generator=g, dtype=torch.float64),
        torch.rand(n, generator=g) < 0.5,
        torch.rand(n, generator=g) < 0.5,
        torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])[torch.randperm(n, generator=g)],
        torch.zeros(n, dtype=torch.long),
    )
    return (module, _optimizer(module.configure_optimizers()), lambda b: module.training_step(b, 0)), batch


def _fundus(devices: int, overrides: tuple[str, ...]) -> tuple[Built, tuple[Tensor, ...]]:
    from qualcl.models import CaptionTokenizer
    from qualcl.recipes.fundus_mm.model import FundusMMNet
    from qualcl.recipes.fundus_mm.modules import ImageTextPretraining
    from qualcl.recipes.fundus_mm.recipe import FUNDUS_MM
    from qualcl.recipes.modules import gathering

    config = FUNDUS_MM.config("smoke", overrides=[f"trainer.devices={devices}", *overrides])
    words = ["fundus", "image", "with", "mild", "severe", "no", "retinopathy", "haemorrhages", "exudates", "clear"]
    g = _generator(4)
    n = 8
    captions = [
        " ".join(words[int(i)] for i in torch.randint(0, len(words), (3 + k % 4,), generator=g)) for k in range(n)
    ]
    tokenizer = CaptionTokenizer.fit(captions)
    net = FundusMMNet(config.model, tokenizer, config.data.image_size, gather_distributed=gathering(config.trainer))
    prompts = torch.stack([tokenizer.encode(["fundus image", "no retinopathy"]) for _ in range(3)])
    module = ImageTextPretraining(net, config.train, prompts, class_level=True, seed=config.seed).double()
    module._total_steps = 10  # the schedule's length, which Lightning's trainer would estimate
    s = config.data.image_size
    batch = (
        torch.rand(n, 3, s, s, generator=g, dtype=torch.float64),
        tokenizer.encode(captions),
        torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]),
        torch.zeros(n, dtype=torch.long),
    )
    return (module, _optimizer(module.configure_optimizers()), lambda b: module.training_step(b, 0)), batch


def _local_discrimination(devices: int, overrides: tuple[str, ...]) -> tuple[Built, tuple[Tensor, ...]]:
    from qualcl.data.views import LocalBatch, LocalDiscriminationViews
    from qualcl.recipes.local_discrimination.model import LDNet
    from qualcl.recipes.local_discrimination.modules import LDPretraining
    from qualcl.recipes.local_discrimination.recipe import LOCAL_DISCRIMINATION
    from qualcl.recipes.modules import gathering

    config = LOCAL_DISCRIMINATION.config("smoke", overrides=[f"trainer.devices={devices}", *overrides])
    m, p, s = config.model, config.pretrain, config.data.image_size
    g = _generator(5)
    images = torch.randint(0, 256, (6, 3, s + 8, s + 8), generator=g, dtype=torch.uint8)
    views = LocalDiscriminationViews(images, size=s, length=8, seed=0, crop_scale=(p.crop_scale, 1.0))
    n = 2 * p.batch_size  # the global batch: each rank holds a smoke batch
    method = {"ld": "ld", "ld_stage1": "pd"}.get(p.method, p.method)  # stage 2 of LD, or a baseline
    module = LDPretraining(
        LDNet(m.encoder, m.dim, m.clusters), views, p, method, gather_distributed=gathering(config.trainer)
    )
    module = module.double()
    whole = views.assemble(views.collate([views[i] for i in range(n)]))
    # per item: its 4 views and its mixup image (assembled view-major: [x1_1, x2_1, x1_2, x2_2, x3] × n)
    batch = (
        whole.images.double().reshape(5, n, *whole.images.shape[1:]).transpose(0, 1),
        whole.weight.double(),
        whole.flip,
        whole.rot,
    )

    def loss(b: tuple[Tensor, ...]) -> Tensor:
        images, weight, flip, rot = b
        assembled = LocalBatch(images.transpose(0, 1).reshape(-1, *images.shape[2:]), weight, flip, rot)
        return module.loss(assembled)[1]

    return (module, _optimizer(module.configure_optimizers()), loss), batch


BUILDERS: dict[str, Callable[[int, tuple[str, ...]], tuple[Built, tuple[Tensor, ...]]]] = {
    "comcl": _comcl,
    "mkcnet": _mkcnet,
    "mirror-retrieval": _mirror,
    "fundus-mm": _fundus,
    "local-discrimination": _local_discrimination,
}


def _state(module: nn.Module) -> dict[str, Tensor]:
    """Parameters and floating buffers (BatchNorm's running statistics)."""
    state = {f"param {k}": v.detach().clone() for k, v in module.named_parameters()}
    state.update({f"buffer {k}": v.clone() for k, v in module.named_buffers() if v.is_floating_point()})
    return state


def _step(recipe: str, overrides: tuple[str, ...]) -> dict[str, Tensor]:
    """One optimisation step of ``recipe``'s main stage on this process's part of the fixed batch."""
    devices = world_size()
    torch.manual_seed(0)
    (module, optimizer, loss_of), batch = BUILDERS[recipe](devices, overrides)
    if is_distributed():
        convert_sync_batchnorm(module)  # what the recipe's DDP run does (trainer.sync_batchnorm)
        n = batch[0].shape[0] // devices
        batch = tuple(t[rank() * n : (rank() + 1) * n] for t in batch)
    module.train()
    optimizer.zero_grad()
    loss_of(batch).backward()
    if is_distributed():  # DDP: the mean of the ranks' gradients (no gradient where no rank has one)
        for p in module.parameters():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            has = torch.tensor([float(p.grad is not None)], dtype=torch.float64)
            dist.all_reduce(grad)
            dist.all_reduce(has)
            p.grad = grad / devices if has.item() > 0 else None
    grads = {f"grad {k}": p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
    lr = torch.tensor(max(float(group["lr"]) for group in optimizer.param_groups), dtype=torch.float64)
    optimizer.step()
    return {**grads, **_state(module), "lr": lr}


@pytest.mark.parametrize(("recipe", "overrides"), RECIPES, ids=[" ".join([r, *o]) for r, o in RECIPES])
def test_one_ddp_step_equals_one_process_on_the_whole_batch(recipe, overrides, tmp_path):
    single = _step(recipe, overrides)
    assert any(k.startswith("param") for k in single)
    for r, state in enumerate(run_on_ranks(functools.partial(_step, recipe, overrides), WORLD, tmp_path)):
        assert state.keys() == single.keys()
        for key, value in state.items():
            # The gradients carry the claim: equal up to float64 rounding (atol 1e-11). After the step,
            # Adam's lr * m / (sqrt(v) + eps) turns a gradient that is only rounding noise (mathematically
            # 0, e.g. a convolution's bias before BatchNorm) into a move of up to lr * 1e-11 / eps = 1e-3 lr,
            # so parameters are compared to 1e-3 lr (the same optimiser applied to equal gradients).
            atol = 1e-11 if key.startswith("grad") else 1e-3 * float(single["lr"]) + 1e-12
            torch.testing.assert_close(
                value, single[key], rtol=1e-9, atol=atol, msg=lambda m, k=key, r=r: f"rank {r} {k}: {m}"
            )


MKCNET_SHARDS = [3, 5]  # unequal shards of the smoke batch of 8: exact only on the loss protocol
MKCNET_META_MODES = ("second_order", "finite_difference")


def _mkcnet_meta_step(mode: str) -> dict[str, Tensor]:
    """One MKCNet Meta Learner step (the module's own closures) on this process's rows of the fixed batch."""
    torch.manual_seed(0)
    (module, _, _), batch = _mkcnet(world_size(), (f"train.meta_mode={mode}",))
    if is_distributed():  # what the recipe's DDP run does for the meta step: qualcl's twice-differentiable layer
        convert_sync_batchnorm(module, backend="qualcl")
        start = sum(MKCNET_SHARDS[: rank()])
        batch = tuple(t[start : start + MKCNET_SHARDS[rank()]] for t in batch)
    optimizers = [SimpleNamespace(optimizer=o) for o in module.configure_optimizers()]
    module.optimizers = lambda: optimizers  # what Lightning hands a module with manual optimisation
    module.train()
    theta = {k: v.clone() for k, v in module.task.state_dict().items()}
    module._meta_update(*batch)
    assert all(torch.equal(v, theta[k]) for k, v in module.task.state_dict().items())  # θ and its buffers kept
    out = {f"grad {n}": p.grad.clone() for n, p in module.meta.named_parameters()}
    out.update({f"after {n}": v.detach().clone() for n, v in module.meta.state_dict().items() if v.is_floating_point()})
    out.update({f"recorded {k}": torch.tensor(v, dtype=torch.float64) for k, v in module.epoch_means().items()})
    return out


def _mkcnet_meta_steps() -> dict[str, dict[str, Tensor]]:
    return {mode: _mkcnet_meta_step(mode) for mode in MKCNET_META_MODES}


def test_mkcnet_meta_step_on_unequal_shards_equals_one_process_on_the_whole_batch(tmp_path):
    single = {mode: _mkcnet_meta_step(mode) for mode in MKCNET_META_MODES}
    for r, per_rank in enumerate(run_on_ranks(_mkcnet_meta_steps, WORLD, tmp_path)):
        for mode, want in single.items():
            assert per_rank[mode].keys() == want.keys()
            assert {"recorded meta_outer_loss", "recorded aux_entropy"} <= want.keys()
            for key, value in per_rank[mode].items():
                rtol = 1e-6 if key.endswith("grad_norm") else 1e-9  # the step reports that norm in float32
                torch.testing.assert_close(
                    value, want[key], rtol=rtol, atol=1e-12, msg=lambda m, k=key, r=r, o=mode: f"rank {r} {o} {k}: {m}"
                )


def test_gathering_follows_the_number_of_processes():
    from qualcl.recipes.config import TrainerConfig
    from qualcl.recipes.modules import gathering

    assert not gathering(TrainerConfig())
    assert gathering(TrainerConfig(devices=2)) and gathering(TrainerConfig(num_nodes=2))
    assert gathering(replace(TrainerConfig(), strategy="ddp"))
