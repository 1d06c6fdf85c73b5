# mypy: ignore-errors
"""Triton kernels of the streaming SigLIP loss and their launchers (imported only when the Triton path runs).

Three kernels, each computing its logit tiles as ``tl.dot(image_tile, text_tile^T) * s + b`` with
the ``(BM | BN, D)`` feature tiles whole in registers (``D <= 1024``), and scale and bias read from
device memory (no host synchronisation):

* ``_forward``: one program per row block walks every column tile and keeps the ``(BM,)`` row sums
  of ``softplus(-t x)`` (the loss), nothing else;
* ``_rows_backward``: one program per row block recomputes its tiles and accumulates
  ``pulled = G @ text`` (``(BM, D)``) and ``G.sum(1)``, with ``G = d loss / d x``;
* ``_columns_backward``: one program per column block recomputes its tiles and accumulates
  ``d text = G^T (h * image)`` with the per-row factor ``h_i = grad_i * s``.

No atomics (the FlashAttention-2 split of the backward), so results are deterministic. Under
``TRITON_INTERPRET=1`` the tiles are upcast to float32 and the blocks are 16 × 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from qualcl.kernels._dispatch import interpreting

__all__ = ["siglip_backward", "siglip_forward"]


@triton.jit
def _softplus_neg(a):
    """``log(1 + exp(-a))`` for ``a >= 0``, accurate where ``exp(-a)`` is below float32's resolution of 1."""
    e = tl.exp(-a)
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * e / (u - 1.0))


@triton.jit
def _load(ptr, idx, limit, offs_d, D, UPCAST: tl.constexpr):
    tile = tl.load(
        ptr + idx.to(tl.int64)[:, None] * D + offs_d[None, :],
        mask=(idx[:, None] < limit) & (offs_d[None, :] < D),
        other=0.0,
    )
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _logits(a, t, rows, cols, N, M, scale, bias, offset, PRECISION: tl.constexpr):
    """Logits of a tile, the positive mask and the valid mask."""
    x = tl.dot(a, tl.trans(t), input_precision=PRECISION) * scale + bias
    positive = cols[None, :] == (rows[:, None] + offset)
    valid = (rows[:, None] < N) & (cols[None, :] < M)
    return x, positive, valid


@triton.jit
def _slopes(x, positive, valid):
    """``d loss / d x``: ``sigmoid(x)`` for a negative, ``-sigmoid(-x)`` for the positive, 0 outside."""
    z = tl.where(positive, -x, x)
    sig = 1.0 / (1.0 + tl.exp(-z))
    return tl.where(valid, tl.where(positive, -sig, sig), 0.0)


@triton.jit
def _forward(
    img_ptr, txt_ptr, out_ptr, scale_ptr, bias_ptr, N, M, D, offset,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    a = _load(img_ptr, rows, N, offs_d, D, UPCAST)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr).to(tl.float32)
    acc = tl.zeros((BM,), tl.float32)
    for c0 in range(0, M, BN):
        cols = c0 + tl.arange(0, BN)
        t = _load(txt_ptr, cols, M, offs_d, D, UPCAST)
        x, positive, valid = _logits(a, t, rows, cols, N, M, scale, bias, offset, PRECISION)
        z = tl.where(positive, -x, x)  # loss = softplus(z)
        terms = tl.maximum(z, 0.0) + _softplus_neg(tl.abs(z))
        acc += tl.sum(tl.where(valid, terms, 0.0), axis=1)
    tl.store(out_ptr + rows, acc, mask=rows < N)


@triton.jit
def _rows_backward(
    img_ptr, txt_ptr, pulled_ptr, bias_rows_ptr, scale_ptr, bias_ptr, N, M, D, offset,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    a = _load(img_ptr, rows, N, offs_d, D, UPCAST)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr).to(tl.float32)
    pulled = tl.zeros((BM, BD), tl.float32)
    sums = tl.zeros((BM,), tl.float32)
    for c0 in range(0, M, BN):
        cols = c0 + tl.arange(0, BN)
        t = _load(txt_ptr, cols, M, offs_d, D, UPCAST)
        x, positive, valid = _logits(a, t, rows, cols, N, M, scale, bias, offset, PRECISION)
        g = _slopes(x, positive, valid)
        pulled += tl.dot(g.to(t.dtype), t, input_precision=PRECISION)
        sums += tl.sum(g, axis=1)
    rmask = rows < N
    tl.store(
        pulled_ptr + rows.to(tl.int64)[:, None] * D + offs_d[None, :],
        pulled,
        mask=rmask[:, None] & (offs_d[None, :] < D),
    )
    tl.store(bias_rows_ptr + rows, sums, mask=rmask)


@triton.jit
def _columns_backward(
    img_ptr, txt_ptr, h_ptr, dtext_ptr, scale_ptr, bias_ptr, N, M, D, offset,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    t = _load(txt_ptr, cols, M, offs_d, D, UPCAST)
    scale = tl.load(scale_ptr).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr).to(tl.float32)
    acc = tl.zeros((BN, BD), tl.float32)
    for r0 in range(0, N, BM):
        rows = r0 + tl.arange(0, BM)
        a = _load(img_ptr, rows, N, offs_d, D, UPCAST)
        h = tl.load(h_ptr + rows, mask=rows < N, other=0.0)
        x, positive, valid = _logits(a, t, rows, cols, N, M, scale, bias, offset, PRECISION)
        g = _slopes(x, positive, valid) * h[:, None]
        acc += tl.dot(tl.trans(g).to(a.dtype), a, input_precision=PRECISION)
    tl.store(
        dtext_ptr + cols.to(tl.int64)[:, None] * D + offs_d[None, :],
        acc,
        mask=(cols[:, None] < M) & (offs_d[None, :] < D),
    )


def _config(d: int, dtype: torch.dtype) -> dict:
    block_d = max(16, triton.next_power_of_2(d))
    if interpreting():
        block_m = block_n = 16
    else:
        block_m = 64 if block_d <= 256 else 32 if block_d <= 512 else 16
        block_n = 64
    precision = "ieee" if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32"
    return {
        "BM": block_m,
        "BN": block_n,
        "BD": block_d,
        "UPCAST": interpreting(),
        "PRECISION": precision,
        "num_warps": 4 if block_d <= 128 else 8,
    }


def _scalars(scale: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    s = scale.detach().float().reshape(1).contiguous()
    return s, (s if bias is None else bias.detach().float().reshape(1).contiguous())


def siglip_forward(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor | None, offset: int) -> Tensor:
    """``(N,)`` float32 per-image losses of ``image`` ``(N, D)`` against ``text`` ``(M, D)`` (contiguous)."""
    n, d = image.shape
    m = text.shape[0]
    cfg = _config(d, image.dtype)
    out = torch.empty(n, device=image.device, dtype=torch.float32)
    s, b = _scalars(scale, bias)
    grid = (triton.cdiv(n, cfg["BM"]),)
    _forward[grid](image, text, out, s, b, n, m, d, offset, HAS_BIAS=bias is not None, **cfg)
    return out


def siglip_backward(
    grad: Tensor,
    image: Tensor,
    text: Tensor,
    scale: Tensor,
    bias: Tensor | None,
    offset: int,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """``(pulled, d_text, bias_rows)`` in float32 for upstream row gradients ``grad`` (empty where not ``needs``)."""
    n, d = image.shape
    m = text.shape[0]
    cfg = _config(d, image.dtype)
    s, b = _scalars(scale, bias)
    empty = image.new_empty(0, dtype=torch.float32)
    pulled, d_text, bias_rows = empty, empty, empty
    if needs[0] or needs[2]:
        pulled = torch.empty(n, d, device=image.device, dtype=torch.float32)
        bias_rows = torch.empty(n, device=image.device, dtype=torch.float32)
        grid = (triton.cdiv(n, cfg["BM"]),)
        _rows_backward[grid](image, text, pulled, bias_rows, s, b, n, m, d, offset, HAS_BIAS=bias is not None, **cfg)
    if needs[1]:
        h = (grad.float() * s).contiguous()
        d_text = torch.empty(m, d, device=image.device, dtype=torch.float32)
        grid = (triton.cdiv(m, cfg["BN"]),)
        _columns_backward[grid](image, text, h, d_text, s, b, n, m, d, offset, HAS_BIAS=bias is not None, **cfg)
    if not needs[0]:
        pulled = empty
    if not needs[2]:
        bias_rows = empty
    return pulled, d_text, bias_rows
