"""CBAM, GlobalAttentionBlock and MetaKnowledgeAssistanceBlock: naive references, shapes, gate ranges."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qualcl.heads import CBAM, ChannelGate, GlobalAttentionBlock, MetaKnowledgeAssistanceBlock, SpatialGate


def _x(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _mlp(gate: ChannelGate, v: list[float]) -> list[float]:
    w1, b1 = gate.mlp[0].weight.tolist(), gate.mlp[0].bias.tolist()
    w2, b2 = gate.mlp[2].weight.tolist(), gate.mlp[2].bias.tolist()
    h = [max(0.0, sum(w * a for w, a in zip(row, v, strict=True)) + b) for row, b in zip(w1, b1, strict=True)]
    return [sum(w * a for w, a in zip(row, h, strict=True)) + b for row, b in zip(w2, b2, strict=True)]


def reference_cbam(module: CBAM, x: torch.Tensor) -> torch.Tensor:
    """Loops in float64: channel gate, then 2-channel compress, k×k conv, batch-stat BN, sigmoid."""
    n, c, h, w = x.shape
    xs = x.tolist()
    gated = []
    for i in range(n):
        raw = [0.0] * c
        for pool in module.channel_gate.pool_types:
            if pool == "avg":
                pooled = [sum(sum(r) for r in xs[i][ch]) / (h * w) for ch in range(c)]
            else:
                pooled = [max(max(r) for r in xs[i][ch]) for ch in range(c)]
            raw = [a + b for a, b in zip(raw, _mlp(module.channel_gate, pooled), strict=True)]
        g = [_sigmoid(v) for v in raw]
        gated.append([[[xs[i][ch][a][b] * g[ch] for b in range(w)] for a in range(h)] for ch in range(c)])
    if module.spatial_gate is None:
        return torch.tensor(gated, dtype=torch.float64)
    sg = module.spatial_gate
    k, pad = sg.kernel_size, sg.kernel_size // 2
    kernel = sg.conv.weight[0].tolist()
    conv = []
    for i in range(n):
        comp = [
            [[max(gated[i][ch][a][b] for ch in range(c)) for b in range(w)] for a in range(h)],
            [[sum(gated[i][ch][a][b] for ch in range(c)) / c for b in range(w)] for a in range(h)],
        ]
        out = [[0.0] * w for _ in range(h)]
        for a in range(h):
            for b in range(w):
                for ch in range(2):
                    for u in range(k):
                        for v in range(k):
                            aa, bb = a + u - pad, b + v - pad
                            if 0 <= aa < h and 0 <= bb < w:
                                out[a][b] += kernel[ch][u][v] * comp[ch][aa][bb]
        conv.append(out)
    values = [v for img in conv for row in img for v in row]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    gamma, beta = float(sg.bn.weight.detach()), float(sg.bn.bias.detach())
    result = []
    for i in range(n):
        s = [
            [_sigmoid((conv[i][a][b] - mean) / math.sqrt(var + 1e-5) * gamma + beta) for b in range(w)]
            for a in range(h)
        ]
        image = [[[gated[i][ch][a][b] * s[a][b] for b in range(w)] for a in range(h)] for ch in range(c)]
        result.append(image)
    return torch.tensor(result, dtype=torch.float64)


pools = st.sampled_from([("avg", "max"), ("avg",), ("max",)])


@given(
    st.integers(2, 3),
    st.integers(1, 20),
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from([1, 4, 16]),
    pools,
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_cbam_matches_naive_reference_and_gate_ranges(n, c, h, w, reduction, pool_types, spatial, seed):
    torch.manual_seed(seed)
    module = CBAM(c, reduction, pool_types, spatial=spatial, kernel_size=3).double()
    with torch.no_grad():
        if module.spatial_gate is not None:
            module.spatial_gate.bn.weight.fill_(1.3)
            module.spatial_gate.bn.bias.fill_(-0.2)
    x = _x(seed, n, c, h, w, scale=2.0)
    out = module(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, reference_cbam(module, x))
    channel, spatial_gate = module.gates(x)
    assert channel.shape == (n, c)
    assert bool(((channel >= 0) & (channel <= 1)).all())
    if spatial:
        assert spatial_gate is not None and spatial_gate.shape == (n, 1, h, w)
        assert bool(((spatial_gate >= 0) & (spatial_gate <= 1)).all())
        torch.testing.assert_close(out, x * channel[:, :, None, None] * spatial_gate)
    else:
        assert spatial_gate is None
        torch.testing.assert_close(out, x * channel[:, :, None, None])
    assert bool((out.abs() <= x.abs() + 1e-12).all())  # gates only attenuate


def test_channel_gate_on_1x1_maps_is_sigmoid_of_twice_the_mlp():
    gate = ChannelGate(32).double()
    v = _x(0, 5, 32)
    torch.testing.assert_close(gate.gate(v[:, :, None, None]), torch.sigmoid(2 * gate.mlp(v)))
    assert gate.mlp[0].out_features == 2
    assert ChannelGate(8, reduction=16).mlp[0].out_features == 1  # max(1, C // r)


def test_cbam_defaults_follow_mkcnet_and_gradcheck():
    cbam = CBAM(16)
    assert cbam.spatial_gate is not None and cbam.spatial_gate.bn is not None
    assert cbam.spatial_gate.bn.momentum == 0.01 and cbam.spatial_gate.conv.kernel_size == (7, 7)
    assert cbam.spatial_gate.conv.bias is None and cbam.channel_gate.pool_types == ("avg", "max")
    small = CBAM(4, 2, kernel_size=3).double()
    x = _x(1, 2, 4, 3, 3).requires_grad_()
    assert torch.autograd.gradcheck(small, (x,))
    assert SpatialGate(batch_norm=False).bn is None


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: CBAM(0), ValueError, "channels"),
        (lambda: CBAM(8, reduction=0), ValueError, "reduction"),
        (lambda: CBAM(8, pool_types=("avg", "lse")), ValueError, "pool_types"),
        (lambda: CBAM(8, pool_types=()), ValueError, "pool_types"),
        (lambda: CBAM(8, pool_types="avg"), TypeError, "pool_types"),
        (lambda: CBAM(8, pool_types=("avg", "avg")), ValueError, "pool_types"),
        (lambda: CBAM(8, kernel_size=4), ValueError, "kernel_size"),
        (lambda: CBAM(8, bn_momentum=2.0), ValueError, "bn_momentum"),
        (lambda: CBAM(8.0), TypeError, "channels"),
        (lambda: GlobalAttentionBlock(8, 0), ValueError, "out_features"),
        (lambda: MetaKnowledgeAssistanceBlock(0), ValueError, "co_embedding_dim"),
    ],
)
def test_bad_constructor_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.randn(2, 7, 3, 3), ValueError, "x must have 8 channels"),
        (torch.randn(2, 8, 3), ValueError, r"x must have shape \(N, 8, H, W\)"),
        (torch.ones(2, 8, 3, 3, dtype=torch.long), TypeError, "x must be a floating"),
        (torch.randn(0, 8, 3, 3), ValueError, "x is empty"),
        ([1.0], TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_feature_maps(x, error, match):
    with pytest.raises(error, match=match):
        CBAM(8)(x)


# ---------------------------------------------------------------- GAB


def test_global_attention_block_is_cbam_pool_project():
    gab = GlobalAttentionBlock(32, 16).double()
    x = _x(2, 3, 32, 5, 4)
    out = gab(x)
    assert out.shape == (3, 16)
    torch.testing.assert_close(out, gab.projection(gab.attention(x).mean(dim=(2, 3))))
    # a pooled (N, C) input is read as (N, C, 1, 1), as in the official code
    v = _x(3, 3, 32)
    torch.testing.assert_close(gab(v), gab(v[:, :, None, None]))
    with pytest.raises(ValueError, match="x must have 32 channels"):
        gab(_x(4, 3, 16))


# ---------------------------------------------------------------- MAB


@given(st.integers(1, 6), st.integers(1, 12), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_mab_concatenates_diagnosis_with_gated_co_embedding(n, d_d, d_w, seed):
    torch.manual_seed(seed)
    mab = MetaKnowledgeAssistanceBlock(d_w).double()
    f_d, f_w = _x(seed, n, d_d), _x(seed + 1, n, d_w, scale=3.0)
    out = mab(f_d, f_w)
    assert out.shape == (n, d_d + d_w)
    assert torch.equal(out[:, :d_d], f_d)
    gate = mab.gate(f_w)
    assert gate.shape == (n, d_w) and bool(((gate >= 0) & (gate <= 1)).all())
    torch.testing.assert_close(out[:, d_d:], gate * f_w)
    # official: CBAM(D_ω, no_spatial) on (N, D_ω, 1, 1) → sigmoid(2 · MLP(f_ω)) ⊙ f_ω
    torch.testing.assert_close(out[:, d_d:], torch.sigmoid(2 * mab.channel_gate.mlp(f_w)) * f_w)
    assert bool((out[:, d_d:].abs() <= f_w.abs()).all())


def test_mab_bad_inputs():
    mab = MetaKnowledgeAssistanceBlock(8)
    with pytest.raises(ValueError, match="co_embedding must have as many rows"):
        mab(torch.randn(3, 4), torch.randn(2, 8))
    with pytest.raises(ValueError, match="co_embedding must have 8 features"):
        mab(torch.randn(3, 4), torch.randn(3, 6))
    with pytest.raises(ValueError, match="diagnosis_feature"):
        mab(torch.randn(3), torch.randn(3, 8))
    with pytest.raises(TypeError, match="diagnosis_feature"):
        mab(torch.ones(3, 4, dtype=torch.long), torch.randn(3, 8))
