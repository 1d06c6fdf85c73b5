"""The loss modules give the same values and gradients through every ``impl``."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qualcl.losses import ClipLoss, InfoNCE, MultiLevelInfoNCE
from qualcl.samplers import CosineCountSchedule, SelfPacedHardNegativeMiner


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _value_and_grads(fn, *tensors):
    leaves = [t.clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    grads = torch.autograd.grad(out.sum(), leaves)
    return out, grads


def _assert_same(fn_a, fn_b, *tensors):
    (a, ga), (b, gb) = _value_and_grads(fn_a, *tensors), _value_and_grads(fn_b, *tensors)
    torch.testing.assert_close(a, b)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y)


@given(
    st.integers(2, 7),
    st.integers(1, 9),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["mean", "sum", "none"]),
    st.booleans(),
    st.data(),
)
def test_info_nce_module_same_through_every_impl(n, m, seed, reduction, in_batch, data):
    q, p, c = _randn(seed, n, 5), _randn(seed + 1, n, 5), _randn(seed + 2, m, 5)
    cols = n if in_batch else m
    top_k = data.draw(st.none() | st.integers(1, cols - 1 if in_batch and cols > 1 else cols))
    mask = _randn(seed + 3, n, cols) > -0.5
    w = _randn(seed + 4, n).abs()
    kw = {"top_k": top_k, "weights": w, "negative_mask": mask}
    modules = {impl: InfoNCE(0.2, reduction=reduction, impl=impl) for impl in ("naive", "torch", "auto")}
    if in_batch:
        _assert_same(lambda a, b: modules["torch"](a, b, **kw), lambda a, b: modules["naive"](a, b, **kw), q, p)
    else:
        _assert_same(
            lambda a, b, x: modules["torch"](a, b, x, **kw), lambda a, b, x: modules["naive"](a, b, x, **kw), q, p, c
        )
    # small problems: "auto" keeps the dense path, bit for bit
    assert torch.equal(modules["auto"](q, p, c, top_k=1), modules["naive"](q, p, c, top_k=1))


@pytest.mark.parametrize("negatives_from", ["view2", "both"])
def test_multi_level_module_same_through_every_impl(negatives_from):
    levels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 2, 0])
    z1, z2 = _randn(0, 10, 6), _randn(1, 10, 6)
    fused = MultiLevelInfoNCE(temperature=0.1, negatives_from=negatives_from, impl="torch")
    dense = MultiLevelInfoNCE(temperature=0.1, negatives_from=negatives_from, impl="naive")
    _assert_same(lambda a, b: fused(a, b, levels), lambda a, b: dense(a, b, levels), z1, z2)
    out = fused(z1, z2, levels, output_dict=True)
    assert set(out.pair_losses) == set(fused.pair_names)
    miner = SelfPacedHardNegativeMiner(CosineCountSchedule(None, max_steps=10))
    with_miner = MultiLevelInfoNCE(temperature=0.1, miner=miner, impl="torch")  # keeps the dense hook
    torch.testing.assert_close(
        with_miner(z1, z2, levels, step=3),
        MultiLevelInfoNCE(temperature=0.1, miner=miner, impl="naive")(z1, z2, levels, step=3),
    )


@pytest.mark.parametrize("use_labels", [False, True])
def test_clip_module_same_through_every_impl(use_labels):
    img, txt = _randn(0, 9, 7), _randn(1, 9, 7)
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 1, 3, 3]) if use_labels else None
    fused, dense = ClipLoss(impl="torch"), ClipLoss(impl="naive")
    _assert_same(lambda a, b: fused(a, b, labels=labels), lambda a, b: dense(a, b, labels=labels), img, txt)
    # a learnt logit scale gets the same gradient
    scales = [torch.tensor(12.0, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    for module, scale in zip((fused, dense), scales, strict=True):
        module(img, txt, scale, labels=labels).backward()
    torch.testing.assert_close(scales[0].grad, scales[1].grad)


def test_bad_impl_is_named():
    for build in (InfoNCE, MultiLevelInfoNCE, ClipLoss):
        with pytest.raises(ValueError, match="impl"):
            build(impl="cuda")
    with pytest.raises(ValueError, match="impl='triton'"):
        InfoNCE(impl="triton")(torch.randn(4, 3), torch.randn(4, 3))
