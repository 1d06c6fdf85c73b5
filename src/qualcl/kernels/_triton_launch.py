"""Launchers of the Triton kernels: block sizes, column splits, buffers and the top-K overflow fallback.

Imported only when a Triton path runs (it imports ``triton``). Under ``TRITON_INTERPRET=1`` the
kernels run on CPU tensors in the interpreter, with tiles upcast to float32 (its bf16 ``tl.dot`` is
wrong) and small blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qualcl.kernels import _triton_kernels as _k
from qualcl.kernels._columns import CandidateFilter, ColumnSpec
from qualcl.kernels._dispatch import interpreting
from qualcl.kernels._topk_torch import finish_topk

__all__ = ["CONFIG", "TritonConfig", "info_nce_backward", "info_nce_forward", "topk"]

kernels: Any = _k


@dataclass
class TritonConfig:
    """Launch settings; ``None`` = chosen from the shape and device.

    Attributes:
        block_m: Rows per tile (GPU: 64 up to D = 256, 32 up to 512, else 16; interpreter: 16).
        block_n: Columns per tile (GPU: 64; interpreter: 16).
        splits: Column splits per row block (GPU: enough programs for 2 waves; interpreter: 1).
        capacity_per_k: Top-K buffer slots per row and split, in units of K.
        num_warps: Warps per program (4 up to D = 128, else 8: the ``(BM, D)`` float32 accumulator
            of the backward kernels needs the registers).
        num_stages: Software-pipelining stages.

    These are starting points, not tuned: no GPU was available when the kernels were written
    (``docs/performance.md``).
    """

    block_m: int | None = None
    block_n: int | None = None
    splits: int | None = None
    capacity_per_k: int = 16
    num_warps: int | None = None
    num_stages: int = 2


CONFIG = TritonConfig()


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _blocks(d: int) -> tuple[int, int, int]:
    block_d = max(16, _next_pow2(d))
    if interpreting():
        return CONFIG.block_m or 16, CONFIG.block_n or 16, block_d
    default_m = 64 if block_d <= 256 else 32 if block_d <= 512 else 16
    return CONFIG.block_m or default_m, CONFIG.block_n or 64, block_d


def _split_columns(n: int, m: int, block_m: int, block_n: int, device: torch.device) -> tuple[int, int]:
    """``(splits, columns per split)``: split the columns when there are too few row blocks."""
    tiles = math.ceil(m / block_n)
    if CONFIG.splits is not None:
        wanted = CONFIG.splits
    elif interpreting() or device.type != "cuda":
        wanted = 1
    else:
        programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
        wanted = min(math.ceil(programs / math.ceil(n / block_m)), math.ceil(tiles / 4))
    wanted = max(1, min(wanted, tiles))
    per_split = math.ceil(tiles / wanted) * block_n
    return math.ceil(m / per_split), per_split


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _uint8(mask: Tensor | None) -> Tensor | None:
    return None if mask is None else mask.contiguous().view(torch.uint8)


def _launch_options(block_d: int) -> dict[str, int]:
    return {"num_warps": CONFIG.num_warps or (4 if block_d <= 128 else 8), "num_stages": CONFIG.num_stages}


def _spec_args(q: Tensor, spec: ColumnSpec) -> tuple[list[Any], list[int], list[bool]]:
    """Pointer arguments (placeholders for absent ones), mask strides and presence flags."""
    pmask, nmask = _uint8(spec.positive_mask), _uint8(spec.negative_mask)
    tensors = [spec.positive_index, spec.labels, spec.candidate_labels, pmask, spec.exclude_index, nmask]
    pointers = [q if t is None else t.contiguous() for t in tensors]
    strides = [0 if pmask is None else pmask.stride(0), 0 if nmask is None else nmask.stride(0)]
    flags = [
        spec.positive_index is not None,
        spec.labels is not None,
        pmask is not None,
        spec.exclude_index is not None,
        nmask is not None,
    ]
    return pointers, strides, flags


def info_nce_forward(
    q: Tensor, c: Tensor, spec: ColumnSpec, scale: float, top_k: int | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Row statistics ``(lse, possum, npos, threshold)`` (float32) of the fused InfoNCE."""
    q, c = q.contiguous(), c.contiguous()
    n, d = q.shape
    m = c.shape[0]
    threshold = None
    if top_k is not None:
        values, _ = topk(q, c, spec.negatives(), top_k, largest=True, scale=scale)
        threshold = values[:, top_k - 1].contiguous()
    block_m, block_n, block_d = _blocks(d)
    splits, per_split = _split_columns(n, m, block_m, block_n, q.device)
    lse, possum, npos = (torch.empty(splits, n, dtype=torch.float32, device=q.device) for _ in range(3))
    pointers, strides, flags = _spec_args(q, spec)
    kernels.info_nce_forward_kernel[(math.ceil(n / block_m), splits)](
        q, c, lse, possum, npos, q if threshold is None else threshold, *pointers,
        n, m, d, q.stride(0), c.stride(0), *strides, float(scale), per_split,
        BM=block_m, BN=block_n, BD=block_d, HAS_PIDX=flags[0], HAS_LABELS=flags[1], HAS_PMASK=flags[2],
        HAS_EXCL=flags[3], HAS_NMASK=flags[4], HAS_TOPK=threshold is not None, UPCAST=interpreting(),
        PRECISION=_precision(q.dtype), **_launch_options(block_d),
    )  # fmt: skip
    return torch.logsumexp(lse, dim=0), possum.sum(0), npos.sum(0), threshold


def info_nce_backward(
    q: Tensor,
    c: Tensor,
    spec: ColumnSpec,
    scale: float,
    threshold: Tensor | None,
    lse: Tensor,
    coef_lse: Tensor,
    coef_pos: Tensor,
    grad_query: bool,
    grad_candidates: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """``(dq, dc)`` (float32) by recomputing the logits tile by tile (no atomics, deterministic)."""
    q, c = q.contiguous(), c.contiguous()
    n, d = q.shape
    m = c.shape[0]
    block_m, block_n, block_d = _blocks(d)
    rows = [t.float().contiguous() for t in (lse, coef_lse, coef_pos)]
    pointers, strides, flags = _spec_args(q, spec)
    common: dict[str, Any] = {
        "BM": block_m,
        "BN": block_n,
        "BD": block_d,
        "HAS_PIDX": flags[0],
        "HAS_LABELS": flags[1],
        "HAS_PMASK": flags[2],
        "HAS_EXCL": flags[3],
        "HAS_NMASK": flags[4],
        "HAS_TOPK": threshold is not None,
        "UPCAST": interpreting(),
        "PRECISION": _precision(q.dtype),
        **_launch_options(block_d),
    }
    thr = q if threshold is None else threshold.contiguous()
    dq = dc = None
    if grad_query:
        splits, per_split = _split_columns(n, m, block_m, block_n, q.device)
        partial = torch.empty(splits, n, d, dtype=torch.float32, device=q.device)
        kernels.info_nce_grad_query_kernel[(math.ceil(n / block_m), splits)](
            q, c, partial, *rows, thr, *pointers, n, m, d, q.stride(0), c.stride(0), *strides, float(scale),
            per_split, **common,
        )  # fmt: skip
        dq = partial[0] if splits == 1 else partial.sum(0)
    if grad_candidates:
        dc = torch.empty(m, d, dtype=torch.float32, device=q.device)
        kernels.info_nce_grad_candidates_kernel[(math.ceil(m / block_n),)](
            q, c, dc, *rows, thr, *pointers, n, m, d, q.stride(0), c.stride(0), *strides, float(scale), **common
        )  # fmt: skip
    return dq, dc


def _filter_rows(filt: CandidateFilter, rows: Tensor) -> CandidateFilter:
    """The filter restricted to the given query rows."""

    def pick(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[rows]

    return filt._replace(
        drop_index=pick(filt.drop_index),
        exclude_index=pick(filt.exclude_index),
        labels=pick(filt.labels),
        drop_mask=pick(filt.drop_mask),
        keep_mask=pick(filt.keep_mask),
    )


def _filter_pass(
    q: Tensor, c: Tensor, filt: CandidateFilter, k: int, sign: float, scale: float, capacity: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    """One launch of the filter kernel: ``(values (N, W), indices (N, W), overflowed (N,))``."""
    n, d = q.shape
    m = c.shape[0]
    block_m, block_n, block_d = _blocks(d)
    splits, per_split = _split_columns(n, m, block_m, block_n, q.device)
    if capacity is None:
        capacity = min(per_split, max(CONFIG.capacity_per_k * k, 2 * block_n))
    capacity = min(capacity, per_split)
    values = torch.empty(splits, n, capacity, dtype=torch.float32, device=q.device)
    indices = torch.empty(splits, n, capacity, dtype=torch.int32, device=q.device)
    count = torch.empty(splits, n, dtype=torch.int32, device=q.device)
    dmask, kmask = _uint8(filt.drop_mask), _uint8(filt.keep_mask)
    optional = [filt.drop_index, filt.exclude_index, filt.labels, filt.candidate_labels, dmask, kmask]
    pointers = [q if t is None else t.contiguous() for t in optional]
    kernels.topk_filter_kernel[(math.ceil(n / block_m), splits)](
        q, c, values, indices, count, *pointers, n, m, d, k, q.stride(0), c.stride(0),
        0 if dmask is None else dmask.stride(0), 0 if kmask is None else kmask.stride(0), float(scale), sign,
        per_split, capacity, BM=block_m, BN=block_n, BD=block_d, KP=_next_pow2(k),
        HAS_DIDX=filt.drop_index is not None, HAS_EXCL=filt.exclude_index is not None,
        LABEL_MODE=filt.label_mode if filt.labels is not None else 0, HAS_DMASK=dmask is not None,
        HAS_KMASK=kmask is not None, UPCAST=interpreting(), PRECISION=_precision(q.dtype), **_launch_options(block_d),
    )  # fmt: skip
    slots = torch.arange(capacity, device=q.device)
    filled = slots < count[..., None]
    values = values.masked_fill(~filled, float("-inf")).permute(1, 0, 2).reshape(n, splits * capacity)
    indices = indices.masked_fill(~filled, -1).permute(1, 0, 2).reshape(n, splits * capacity).long()
    return values, indices, (count > capacity).any(dim=0)


def _select(values: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` of buffers in column order: by value, then by lower column (stable sort)."""
    values, order = torch.sort(values, dim=1, descending=True, stable=True)
    values, indices = values[:, :k], indices.gather(1, order[:, :k])
    if values.shape[1] < k:  # fewer slots than k: every kept candidate is in the buffer
        pad = k - values.shape[1]
        values = torch.cat([values, values.new_full((values.shape[0], pad), float("-inf"))], dim=1)
        indices = torch.cat([indices, indices.new_full((indices.shape[0], pad), -1)], dim=1)
    return values, indices


def topk(
    q: Tensor,
    c: Tensor,
    filt: CandidateFilter,
    k: int,
    *,
    largest: bool,
    scale: float,
    capacity: int | None = None,
    fallback_rows: int = 256,
) -> tuple[Tensor, Tensor]:
    """Exact per-row top-``k`` of ``scale * q @ c.T`` over the kept columns (float32 values, int64 indices).

    Rows whose candidates overflow the buffer are recomputed with a buffer as wide as the column
    split (exact, ``fallback_rows`` rows at a time).
    """
    q, c = q.contiguous(), c.contiguous()
    sign = 1.0 if largest else -1.0
    values, indices, overflowed = _filter_pass(q, c, filt, k, sign, scale, capacity)
    values, indices = _select(values, indices, k)
    if bool(overflowed.any()):
        rows = torch.nonzero(overflowed).flatten()
        for start in range(0, rows.numel(), fallback_rows):
            part = rows[start : start + fallback_rows]
            redo_values, redo_indices, _ = _filter_pass(
                q[part], c, _filter_rows(filt, part), k, sign, scale, capacity=c.shape[0]
            )
            values[part], indices[part] = _select(redo_values, redo_indices, k)
    return finish_topk(values, indices, largest)
