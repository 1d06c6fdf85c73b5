"""The decoders' and the fusion's shared block against a naive float64 attention, with padding and causality."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.heads._blocks import AttentionBlock


def _layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _attention(mha, query, key, value, key_padding=None, causal=False):
    """Multi-head attention written out: per sample, per head, per query, a softmax over allowed keys."""
    d, h = mha.embed_dim, mha.num_heads
    if mha._qkv_same_embed_dim:
        wq, wk, wv = mha.in_proj_weight.split(d)
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    bq, bk, bv = mha.in_proj_bias.split(d)
    q, k, v = query @ wq.T + bq, key @ wk.T + bk, value @ wv.T + bv
    n, lq, lk, hd = q.shape[0], q.shape[1], k.shape[1], d // h
    out = torch.zeros(n, lq, d, dtype=q.dtype)
    for b in range(n):
        for head in range(h):
            sl = slice(head * hd, (head + 1) * hd)
            for i in range(lq):
                scores, values = [], []
                for j in range(lk):
                    if key_padding is not None and key_padding[b, j]:
                        continue
                    if causal and j > i:
                        continue
                    scores.append(float(q[b, i, sl] @ k[b, j, sl]) / math.sqrt(hd))
                    values.append(v[b, j, sl])
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                out[b, i, sl] = sum(w / total * val for w, val in zip(weights, values, strict=True))
    return out @ mha.out_proj.weight.T + mha.out_proj.bias


def reference_block(block, x, padding=None, causal=False, context=None, context_padding=None):
    keep = torch.ones(x.shape[:2], dtype=torch.bool) if padding is None else ~padding
    keep = keep[..., None]
    if block.self_attn is not None:
        h = _layer_norm(x, block.norm_self)
        x = torch.where(keep, x + _attention(block.self_attn, h, h, h, padding, causal), x)
    if block.cross_attn is not None:
        c = _layer_norm(context, block.norm_context)
        q = _layer_norm(x, block.norm_query)
        x = torch.where(keep, x + _attention(block.cross_attn, q, c, c, context_padding), x)
    h = _layer_norm(x, block.norm_mlp)
    mlp = block.mlp.fc2(torch.nn.functional.gelu(block.mlp.fc1(h)))
    return torch.where(keep, x + mlp, x)


def _padding(seed, n, length):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    return torch.arange(length)[None] >= lengths[:, None]


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from(["self", "cross", "both"]),
    st.booleans(),
    st.booleans(),
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(0, 2**31 - 1),
)
def test_block_matches_the_naive_float64_attention(kind, causal, padded, n, length, context_length, seed):
    torch.manual_seed(seed)
    block = AttentionBlock(
        8, 2, self_attention=kind != "cross", context_dim=None if kind == "self" else 6, mlp_ratio=2.0
    ).double()
    x = torch.randn(n, length, 8, dtype=torch.float64)
    context = torch.randn(n, context_length, 6, dtype=torch.float64) if kind != "self" else None
    padding = _padding(seed, n, length) if padded else None
    context_padding = _padding(seed + 1, n, context_length) if padded and context is not None else None
    causal = causal and kind != "cross"
    with torch.no_grad():
        got = block(x, padding_mask=padding, causal=causal, context=context, context_padding_mask=context_padding)
    with torch.no_grad():
        want = reference_block(block, x, padding, causal, context, context_padding)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_block_gradients():
    torch.manual_seed(0)
    block = AttentionBlock(4, 2, context_dim=4, mlp_ratio=1.0).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    padding = torch.tensor([[False, False, True], [False, False, False]])
    assert torch.autograd.gradcheck(lambda a, b: block(a, padding_mask=padding, causal=True, context=b), (x, c))


def test_block_refuses_missing_context_and_bad_heads():
    with pytest.raises(ValueError, match="pass context"):
        AttentionBlock(8, 2, context_dim=8)(torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="dim 10 is not divisible by num_heads 4"):
        AttentionBlock(10, 4)
