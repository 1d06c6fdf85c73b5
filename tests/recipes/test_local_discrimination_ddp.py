"""Local discrimination's shape-guided stage and transfer are exact under DDP: 2 gloo ranks = one process.

The pre-training stages are checked with every recipe's main stage (``test_recipe_ddp_step.py``).
Here: the shape-guided stage's step (its prior masks drawn for the global batch, each rank taking its
share) and the transfer's step with either soft-Dice form (the code's batch Dice sums over every
rank's pixels). Each rank takes its half of a fixed float64 batch, gradients are averaged across
ranks (what DDP does) and the stage's optimisers step; gradients and parameters must equal one
process's step on the whole batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from gloo import run_on_ranks
from qualcl.data.views import LocalBatch, LocalDiscriminationViews
from qualcl.distributed import convert_sync_batchnorm, is_distributed, rank, world_size
from qualcl.models import build_encoder
from qualcl.recipes.local_discrimination import (
    LOCAL_DISCRIMINATION,
    LDNet,
    SegmentationNet,
    SegmentationTransfer,
    ShapeGuidedTraining,
    build_losses,
)
from qualcl.recipes.modules import gathering

pytestmark = pytest.mark.distributed
WORLD = 2


def _my_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's block of rows of each tensor (all of them on one process)."""
    if not is_distributed():
        return tensors
    n = tensors[0].shape[0] // world_size()
    return tuple(t[rank() * n : (rank() + 1) * n] for t in tensors)


def _average_gradients(module: nn.Module) -> None:
    """DDP's gradient averaging (a parameter without gradient on every rank keeps none)."""
    if not is_distributed():
        return
    for p in module.parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        has = torch.tensor([float(p.grad is not None)], dtype=torch.float64)
        dist.all_reduce(grad)
        dist.all_reduce(has)
        p.grad = grad / world_size() if has.item() > 0 else None


def _state(prefix: str, module: nn.Module) -> dict[str, Tensor]:
    state = {f"{prefix} param {k}": v.detach().clone() for k, v in module.named_parameters()}
    state.update({f"{prefix} grad {k}": v.grad.clone() for k, v in module.named_parameters() if v.grad is not None})
    state.update({f"{prefix} buffer {k}": v.clone() for k, v in module.named_buffers() if v.is_floating_point()})
    return state


def _shape_step() -> dict[str, Tensor]:
    """One generator step and one discriminator step of the shape-guided stage on this rank's items."""
    torch.manual_seed(0)
    config = LOCAL_DISCRIMINATION.config("smoke", overrides=[f"trainer.devices={world_size()}"])
    m, p, s = config.model, config.pretrain, config.data.image_size
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (6, 3, s + 8, s + 8), generator=g, dtype=torch.uint8)
    priors = torch.rand(7, s, s, generator=g) < 0.3
    views = LocalDiscriminationViews(images, size=s, length=8, seed=0, crop_scale=(p.crop_scale, 1.0))
    net = LDNet(m.encoder, m.dim, config.shape.clusters)
    module = ShapeGuidedTraining(net, views, priors, p, config.shape, gather_distributed=gathering(config.trainer))
    module = module.double()
    if is_distributed():
        convert_sync_batchnorm(module)
    n = 2 * p.batch_size  # the global batch: each rank holds a smoke batch
    whole = views.assemble(views.collate([views[i] for i in range(n)]))
    # per item: its 4 views and its mixup image (assembled view-major: [x1_1, x2_1, x1_2, x2_2, x3] × n)
    items = whole.images.double().reshape(5, n, *whole.images.shape[1:]).transpose(0, 1)
    items, weight, flip, rot = _my_rows(items, whole.weight.double(), whole.flip, whole.rot)
    batch = LocalBatch(items.transpose(0, 1).reshape(-1, *items.shape[2:]), weight, flip, rot)
    (net_opt, disc_opt), _ = module.configure_optimizers()
    module.train()
    net_opt.zero_grad()
    _, total, fake = module.generator_loss(batch)
    total.backward()
    _average_gradients(module)
    net_opt.step()
    disc_opt.zero_grad()
    module.discriminator_loss(fake, step=3).backward()
    _average_gradients(module.discriminator)
    disc_opt.step()
    return {**_state("net", module.net), **_state("discriminator", module.discriminator)}


def _transfer_step(per_image: bool) -> dict[str, Tensor]:
    """One soft-Dice step of the transfer (encoder fine-tuned) on this rank's images."""
    torch.manual_seed(0)
    config = LOCAL_DISCRIMINATION.config("smoke", overrides=[f"trainer.devices={world_size()}"])
    s = config.data.image_size
    losses = build_losses(config.pretrain, gather=gathering(config.trainer), per_image_dice=per_image)
    module = SegmentationTransfer(
        SegmentationNet(build_encoder(config.model.encoder)), lr=1e-3, frozen=False, loss=losses["dice"]
    ).double()
    if is_distributed():
        convert_sync_batchnorm(module)
    g = torch.Generator().manual_seed(6)
    images = torch.randn(4, 3, s, s, generator=g, dtype=torch.float64)
    masks = torch.zeros(4, 1, s, s, dtype=torch.float64)
    masks[0, :, :20] = 1
    masks[1, :, 5:8, 5:40] = 1
    masks[2, :, 30:, 30:] = 1  # the last image has no foreground
    images, masks = _my_rows(images, masks)
    optimizer = module.configure_optimizers()
    module.train()
    optimizer.zero_grad()
    module.dice_loss(module.net(images), masks).backward()
    _average_gradients(module)
    optimizer.step()
    return _state("net", module.net)


def _assert_equal_to_one_process(work: Callable[[], dict[str, Tensor]], tmp_path) -> None:
    single = work()
    assert any(" grad " in k for k in single)
    for r, state in enumerate(run_on_ranks(work, WORLD, tmp_path)):
        assert state.keys() == single.keys()
        for key, value in state.items():
            # gradients carry the claim; Adam turns rounding noise into moves of up to 1e-3 lr (lr = 1e-3 here)
            atol = 1e-11 if " grad " in key else 1e-6
            torch.testing.assert_close(
                value, single[key], rtol=1e-9, atol=atol, msg=lambda m, k=key, r=r: f"rank {r} {k}: {m}"
            )


def test_a_shape_guided_step_on_two_ranks_equals_one_process(tmp_path):
    _assert_equal_to_one_process(_shape_step, tmp_path)


@pytest.mark.parametrize("per_image", [False, True], ids=["batch dice (the code)", "per-image dice"])
def test_a_transfer_step_on_two_ranks_equals_one_process(per_image, tmp_path):
    _assert_equal_to_one_process(functools.partial(_transfer_step, per_image), tmp_path)


def test_each_rank_draws_its_share_of_the_global_priors(monkeypatch):
    import qualcl.recipes.local_discrimination.modules as modules

    config = LOCAL_DISCRIMINATION.config("smoke")
    priors = torch.arange(9.0).view(9, 1, 1).expand(9, 4, 4).contiguous()
    module = ShapeGuidedTraining(LDNet(dim=4, clusters=2), None, priors, config.pretrain, config.shape)  # type: ignore[arg-type]
    one = module.draw_priors(6, step=11)
    monkeypatch.setattr(modules, "world_size", lambda: 2)
    shares = []
    for r in range(2):
        monkeypatch.setattr(modules, "rank", lambda r=r: r)
        shares.append(module.draw_priors(3, step=11))
    assert torch.equal(torch.cat(shares), one)
    assert not torch.equal(module.draw_priors(3, step=12), shares[1])
