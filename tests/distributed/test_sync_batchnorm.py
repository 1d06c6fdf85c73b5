"""qualcl's SyncBatchNorm: 2 gloo processes holding parts of a batch equal one BatchNorm on the whole batch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gloo import run_on_ranks
from qualcl.distributed import (
    SyncBatchNorm,
    all_reduce_sum,
    convert_sync_batchnorm,
    rank,
    revert_sync_batchnorm,
)

WORLD = 2

# (layer, global input shape, rows of rank 0, rows of rank 1, momentum): unequal parts, a rank with no rows,
# 1d/2d/3d inputs, the cumulative average
CASES = [
    (nn.BatchNorm1d, (8, 5), 3, 5, 0.1),
    (nn.BatchNorm1d, (6, 4, 3), 6, 0, 0.3),
    (nn.BatchNorm2d, (8, 3, 4, 2), 5, 3, 0.1),
    (nn.BatchNorm2d, (7, 2, 3, 3), 2, 5, None),
    (nn.BatchNorm3d, (5, 2, 2, 2, 3), 1, 4, 0.1),
]


def _reference(
    layer: type[nn.Module], shape: tuple[int, ...], momentum: float | None
) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    bn = layer(shape[1], momentum=momentum).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 2
    return bn, x


def _objective(y: torch.Tensor) -> torch.Tensor:
    """A non-linear loss with a different weight per element (BatchNorm's gradient is not trivial)."""
    w = torch.linspace(-1, 2, y.shape[1:].numel(), dtype=y.dtype).reshape(y.shape[1:])
    return (torch.tanh(y) * w).sum() + (y**2).sum() / 10


def _step(bn: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two training forwards (running statistics move twice), first and second-order gradients."""
    x = x.clone().requires_grad_()
    bn.train()
    bn(x.detach())
    y = bn(x)
    (gx,) = torch.autograd.grad(_objective(y), x, create_graph=True)
    ((gx**2).sum() + _objective(y)).backward()
    return {
        "y": y.detach(),
        "x.grad": gx.detach(),
        "x.grad2": x.grad.detach(),
        "weight.grad": bn.weight.grad.detach().clone(),
        "bias.grad": bn.bias.grad.detach().clone(),
        "running_mean": bn.running_mean.clone(),
        "running_var": bn.running_var.clone(),
        "num_batches_tracked": bn.num_batches_tracked.clone(),
        "eval": bn.eval()(x.detach()),
    }


def _compare_cases() -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    results = []
    for layer, shape, n0, n1, momentum in CASES:
        bn, x = _reference(layer, shape, momentum)
        single = _step(copy.deepcopy(bn), x)
        start, size = (0, n0) if rank() == 0 else (n0, n1)
        synced = convert_sync_batchnorm(copy.deepcopy(bn), backend="qualcl")
        assert isinstance(synced, SyncBatchNorm)
        mine = _step(synced, x[start : start + size])
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key, value in mine.items():
            if key.endswith(".grad") and key.startswith(("weight", "bias")):
                value = value.clone()
                dist.all_reduce(value)  # what DDP does (its mean, times the world: the losses are sums)
            expected = single[key]
            if key in ("y", "x.grad", "x.grad2", "eval"):
                expected = expected[start : start + size]
            out[key] = (value, expected)
        results.append(out)
    return results


@pytest.mark.distributed
def test_two_ranks_equal_one_batchnorm_on_the_whole_batch(tmp_path):
    """Outputs, input gradients (first and second order), parameter gradients and running stats, float64."""
    for results in run_on_ranks(_compare_cases, WORLD, tmp_path):
        for case, pairs in zip(CASES, results, strict=True):
            for key, (got, expected) in pairs.items():
                torch.testing.assert_close(
                    got, expected, rtol=1e-10, atol=1e-10, msg=lambda m, k=key, c=case: f"{c} {k}: {m}"
                )


def _all_reduce_twice() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.tensor([1.0, 2.0], dtype=torch.float64) * (rank() + 1)
    x.requires_grad_()
    y = all_reduce_sum(x)
    loss = (y**3).sum() * (rank() + 1)  # each rank's loss weighs the sum differently
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    return y.detach(), g.detach(), h


@pytest.mark.distributed
def test_all_reduce_sum_is_differentiable_twice(tmp_path):
    """y = x_0 + x_1, L = Σ_r (r+1)·Σ y³ = 3·Σ y³: dL/dx_r = 9·y²; the sum over ranks of Σ 9·y² gives 2·18·y."""
    y = torch.tensor([3.0, 6.0], dtype=torch.float64)
    for got_y, g, h in run_on_ranks(_all_reduce_twice, WORLD, tmp_path):
        torch.testing.assert_close(got_y, y)
        torch.testing.assert_close(g, 3 * 3 * y**2)
        torch.testing.assert_close(h, 2 * 18 * y)


@settings(max_examples=25, deadline=None)
@given(
    layer=st.sampled_from([nn.BatchNorm1d, nn.BatchNorm2d]),
    n=st.integers(2, 6),
    momentum=st.sampled_from([0.1, 0.5, None]),
    affine=st.booleans(),
    track=st.booleans(),
    training=st.booleans(),
)
def test_one_process_is_torch_batchnorm_exactly(layer, n, momentum, affine, track, training):
    """Without a process group the layer is torch's BatchNorm, bit for bit (outputs, gradients, running stats)."""
    torch.manual_seed(n)
    shape = (n, 3) if layer is nn.BatchNorm1d else (n, 3, 2, 3)
    bn = layer(3, momentum=momentum, affine=affine, track_running_stats=track).train(training)
    synced = convert_sync_batchnorm(copy.deepcopy(bn), backend="qualcl")
    assert isinstance(synced, SyncBatchNorm)
    x = torch.randn(shape)
    for module in (bn, synced):
        module(x)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = bn(xa), synced(xb)
    assert torch.equal(ya, yb)
    ya.pow(2).sum().backward()
    yb.pow(2).sum().backward()
    assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(bn.state_dict()["running_mean"], synced.state_dict()["running_mean"]) if track else True
    for (name, a), b in zip(bn.state_dict().items(), synced.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_convert_and_revert_keep_parameters_buffers_and_mode():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(16)))
    net[2][1].eval()
    weight, mean = net[1].weight, net[1].running_mean
    synced = convert_sync_batchnorm(net)  # CPU tensors: qualcl's
    assert synced is net and isinstance(net[1], SyncBatchNorm) and isinstance(net[2][1], SyncBatchNorm)
    assert net[1].weight is weight and net[1].running_mean is mean and not net[2][1].training
    assert convert_sync_batchnorm(net) is net and isinstance(net[1], SyncBatchNorm)  # already converted
    reverted = revert_sync_batchnorm(net)
    assert type(reverted[1]) is nn.BatchNorm2d and type(reverted[2][1]) is nn.BatchNorm1d
    assert reverted[1].weight is weight and reverted[1].running_mean is mean and not reverted[2][1].training
    torch_synced = convert_sync_batchnorm(nn.BatchNorm2d(4), backend="torch")
    assert type(torch_synced) is nn.SyncBatchNorm
    assert type(revert_sync_batchnorm(torch_synced)) is nn.BatchNorm2d


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="backend must be"):
        convert_sync_batchnorm(nn.BatchNorm1d(2), backend="nccl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 channels"):
        SyncBatchNorm(2)(torch.randn(4, 3))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        SyncBatchNorm(2)(torch.randn(4))
