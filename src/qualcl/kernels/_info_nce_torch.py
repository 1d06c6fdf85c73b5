"""InfoNCE in plain torch: the streaming (chunked, recomputing) CPU path and the dense naive path.

Streaming: rows are processed in blocks of ``R`` rows against column blocks of ``C`` candidates, so
memory is O((N + M)·D + R·C) instead of O(N·M). With a single column block (``C = M``, the default
up to 65,536 candidates) a block's softmax is complete as soon as its logits are, and for a scalar
reduction the forward pass also computes the gradient for a unit upstream gradient (3 GEMMs in
total, backward only scales it). Otherwise the column blocks are combined with an online
log-sum-exp (after a running top-K pass for ``top_k``) and backward recomputes every block (4 GEMMs).
The logits of a block are always computed by the same call on the same shapes, so the top-K
threshold and the recomputed logits agree bit for bit. When the logits are provably small (unit
vectors and a temperature of at least about 1/70: :data:`UNSHIFTED_BOUND`), a block's exponentials
need no row-maximum shift, which saves two of the few passes over the block besides its GEMMs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from qualcl.functional.reduction import weighted_reduce
from qualcl.kernels._columns import ColumnSpec, drop_block_, fill_index_, local_index, positive_block
from qualcl.kernels._rows import row_coefficients, row_losses, upstream_row_grad

__all__ = [
    "BLOCK_ELEMENTS",
    "MAX_COLUMN_BLOCK",
    "Streamed",
    "block_buffer",
    "block_shape",
    "naive_info_nce",
    "streaming_backward",
    "streaming_forward",
]

BLOCK_ELEMENTS = 1 << 22
"""Logits per block (16 MiB in float32): rows per block default to ``BLOCK_ELEMENTS // C``."""
MAX_COLUMN_BLOCK = 1 << 16
"""Widest column block by default; more candidates are combined with an online log-sum-exp."""


def block_shape(n: int, m: int, chunk_size: int | None, column_chunk_size: int | None) -> tuple[int, int]:
    """Rows and columns per block: the given sizes, or ``C = min(M, 65536)``, ``R = 2^22 // C``."""
    cols = min(m, column_chunk_size or MAX_COLUMN_BLOCK)
    rows = chunk_size or max(1, BLOCK_ELEMENTS // max(cols, 1))
    return max(1, min(rows, n)), max(1, cols)


class _Block(NamedTuple):
    logits: Tensor  # (R, C) denominator logits, -inf outside the denominator
    positive_col: Tensor | None  # (R,) local positive column or -1
    positive_dense: Tensor | None  # (R, C) bool
    possum: Tensor
    npos: Tensor
    threshold: Tensor | None  # (R,) the top-K threshold computed inline


def _block(
    q: Tensor,
    c: Tensor,
    spec: ColumnSpec,
    r0: int,
    c0: int,
    top_k: int | None,
    threshold: Tensor | None,
    buffer: Tensor,
) -> _Block:
    """Logits ``q @ c.T`` of one block (``q`` already scaled) with non-denominator entries at ``-inf``.

    ``threshold`` (``(R,)``) restricts the negatives; without it and with ``top_k`` the block must
    hold every column and the threshold (the ``top_k``-th largest negative logit) is computed here.
    The logits are written into ``buffer`` (:func:`block_buffer`), so they live until the next block.
    """
    scores = torch.mm(q, c.T, out=buffer[: q.shape[0] * c.shape[0]].view(q.shape[0], c.shape[0]))
    r1, c1 = r0 + scores.shape[0], c0 + scores.shape[1]
    positive_col, positive_dense = positive_block(spec, r0, r1, c0, c1)
    if positive_dense is not None:
        possum = torch.where(positive_dense, scores, 0.0).sum(1)
        npos = positive_dense.sum(1).to(scores.dtype)
    elif positive_col is not None:
        has = positive_col >= 0
        picked = scores.gather(1, positive_col.clamp(min=0)[:, None]).squeeze(1)
        possum = torch.where(has, picked, 0.0)
        npos = has.to(scores.dtype)
    else:
        possum = scores.new_zeros(scores.shape[0])
        npos = possum.clone()

    if top_k is None and spec.negative_mask is None:
        fill_index_(scores, local_index(spec.exclude_index, r0, r1, c0, c1), float("-inf"))
        return _Block(scores, positive_col, positive_dense, possum, npos, None)

    negatives = scores.clone()
    drop_block_(negatives, spec.negatives(), r0, c0)
    inline = None
    if top_k is not None:
        if threshold is None:
            inline = torch.topk(negatives, top_k, dim=1, sorted=False).values.amin(dim=1)
            threshold = inline
        negatives.masked_fill_(negatives < threshold[:, None], float("-inf"))
    if positive_dense is not None:
        logits = torch.where(positive_dense, scores, negatives)
    else:
        logits = negatives
        if positive_col is not None:
            index = positive_col.clamp(min=0)[:, None]
            restored = torch.where((positive_col >= 0)[:, None], scores.gather(1, index), negatives.gather(1, index))
            logits.scatter_(1, index, restored)
    return _Block(logits, positive_col, positive_dense, possum, npos, inline)


#: Largest ``|logit| + log(columns)`` for which a block is exponentiated without its row maxima:
#: every ``exp`` and row sum then stays a normal float32 (``exp(±80)`` and ``e^80`` summed).
UNSHIFTED_BOUND = 80.0


def block_buffer(like: Tensor, rows: int, cols: int) -> Tensor:
    """One flat buffer for every block's logits (``rows · cols`` elements, like ``like``).

    A fresh 16 MiB block per step would be mapped anew by the allocator and page-faulted on its first
    write: on a 2-core CPU about 10 % of an 8192 × 8192 InfoNCE forward + backward.
    """
    return like.new_empty(rows * cols)


def logit_bound(scaled: Tensor, c: Tensor) -> float:
    """Cauchy–Schwarz bound on ``|scaled @ c.T|``: the largest row norm of each side, multiplied."""
    if not (scaled.numel() and c.numel()):
        return 0.0
    return float(torch.linalg.vector_norm(scaled, dim=1).amax() * torch.linalg.vector_norm(c, dim=1).amax())


def _exp_rows_(logits: Tensor, shift: bool = True) -> tuple[Tensor, Tensor]:
    """``logits <- exp(logits - rowmax)`` in place; returns ``(rowmax, row sum)`` (``-inf`` rows give 0).

    ``shift=False`` (the logits are known to be small, :data:`UNSHIFTED_BOUND`) skips the row maxima:
    ``exp(logits)`` and a zero shift, two passes over the block fewer.
    """
    if not shift:
        return logits.new_zeros(logits.shape[0]), logits.exp_().sum(dim=1)
    top = logits.amax(dim=1)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    logits.sub_(top[:, None]).exp_()
    return top, logits.sum(dim=1)


def _add_positive_grad_(grad: Tensor, block: _Block, coef_pos: Tensor) -> Tensor:
    """Add ``coef_pos`` at the positive entries of the block's gradient (in place)."""
    if block.positive_dense is not None:
        grad.add_(block.positive_dense.to(grad.dtype).mul_(coef_pos[:, None]))
    elif block.positive_col is not None:
        has = block.positive_col >= 0
        grad.scatter_add_(1, block.positive_col.clamp(min=0)[:, None], torch.where(has, coef_pos, 0.0)[:, None])
    return grad


def _row_scaled_grads(
    block: _Block, row_scale: Tensor, coef_pos: Tensor, c: Tensor, q: Tensor, dq: Tensor, dc: Tensor, r0: int
) -> None:
    """``dq[r0:r1] = G @ c`` and ``dc += G.T @ q`` for ``G = diag(row_scale) · E`` plus ``coef_pos`` at each positive.

    ``E`` (``block.logits``) holds the block's exponentials. The diagonal scale is applied to the
    ``(R, D)`` result and operand instead of the ``(R, C)`` block (one pass over the block fewer), and
    the one positive per row is a gather / ``index_add_`` of ``(R, D)`` rows. ``dq`` / ``dc`` empty:
    not wanted.
    """
    rows = block.logits.shape[0]
    column = weight = None
    if block.positive_col is not None:
        column = block.positive_col.clamp(min=0)
        weight = torch.where(block.positive_col >= 0, coef_pos, 0.0)[:, None]
    if dq.numel():
        out = torch.mm(block.logits, c, out=dq[r0 : r0 + rows]).mul_(row_scale[:, None])
        if column is not None and weight is not None:
            out.addcmul_(c.index_select(0, column), weight)
    if dc.numel():
        dc.addmm_(block.logits.T, q * row_scale[:, None])
        if column is not None and weight is not None:
            dc.index_add_(0, column, q * weight)


def _softmax_grad_(block: _Block, lse: Tensor, coef_lse: Tensor, coef_pos: Tensor) -> Tensor:
    """Turn the block's logits into ``dL/dlogits`` in place (given the rows' log-sum-exp)."""
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    grad = block.logits.sub_(safe[:, None]).exp_().mul_(coef_lse[:, None])
    return _add_positive_grad_(grad, block, coef_pos)


def _thresholds(q: Tensor, c: Tensor, spec: ColumnSpec, top_k: int, rows: int, cols: int) -> Tensor:
    """The ``top_k``-th largest negative logit of every row (``q`` scaled), by a running top-K over column blocks."""
    n, m = q.shape[0], c.shape[0]
    out = q.new_empty(n)
    filt = spec.negatives()
    for r0 in range(0, n, rows):
        best = q.new_empty(min(rows, n - r0), 0)
        for c0 in range(0, m, cols):
            scores = torch.mm(q[r0 : r0 + rows], c[c0 : c0 + cols].T)
            drop_block_(scores, filt, r0, c0)
            merged = torch.cat([best, torch.topk(scores, min(top_k, scores.shape[1]), dim=1).values], dim=1)
            best = torch.topk(merged, min(top_k, merged.shape[1]), dim=1).values
        out[r0 : r0 + rows] = best[:, -1]
    return out


class Streamed(NamedTuple):
    """Result of :func:`streaming_forward`.

    Attributes:
        loss: Reduced loss (scalar, or ``(N,)`` for ``"none"``).
        losses: ``(N,)`` unweighted per-row losses.
        lse: ``(N,)`` denominator log-sum-exp over the candidate columns.
        npos: ``(N,)`` number of positive columns.
        threshold: ``(N,)`` top-K threshold, or ``(0,)`` without ``top_k``.
        grad_query: ``(N, D)`` gradient for a unit upstream gradient, or ``(0,)``.
        grad_candidates: ``(M, D)`` likewise, or ``(0,)``.
        grad_positive_logit: ``(N,)`` likewise, or ``(0,)``.
    """

    loss: Tensor
    losses: Tensor
    lse: Tensor
    npos: Tensor
    threshold: Tensor
    grad_query: Tensor
    grad_candidates: Tensor
    grad_positive_logit: Tensor


def streaming_forward(
    q: Tensor,
    c: Tensor,
    spec: ColumnSpec,
    *,
    scale: float,
    top_k: int | None,
    positive_logit: Tensor | None,
    weights: Tensor | None,
    reduction: str,
    rows: int,
    cols: int,
    grad_query: bool,
    grad_candidates: bool,
) -> Streamed:
    """Forward pass of the streaming path; see the module docstring.

    ``grad_query`` / ``grad_candidates`` ask for the gradient to be computed during the forward pass
    (only honoured for a scalar reduction and a single column block).
    """
    n, m = q.shape[0], c.shape[0]
    single = cols >= m
    cache = single and reduction != "none" and (grad_query or grad_candidates or positive_logit is not None)
    scaled = q * scale  # logits are scaled @ c.T: no extra pass over the blocks
    shift = logit_bound(scaled, c) + math.log(max(m, 1)) > UNSHIFTED_BOUND  # e.g. unit vectors and τ ≥ 1/70
    threshold = None
    if top_k is not None and not single:
        threshold = _thresholds(scaled, c, spec, top_k, rows, cols)
    lse, possum, npos = q.new_empty(n), q.new_empty(n), q.new_empty(n)
    inline_threshold = q.new_empty(n) if top_k is not None and single else None
    dq = torch.empty_like(q) if cache and grad_query else q.new_empty(0)
    dc = torch.zeros_like(c) if cache and grad_candidates else q.new_empty(0)
    dpos = q.new_empty(n) if cache and positive_logit is not None else q.new_empty(0)
    unit = upstream_row_grad(q.new_ones(()), weights, reduction, q.new_empty(n)) if cache else None
    buffer = block_buffer(q, min(rows, n), min(cols, m))

    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        if single:
            block = _block(scaled[r0:r1], c, spec, r0, 0, top_k, None, buffer)
            top, total_exp = _exp_rows_(block.logits, shift)  # logits now hold exp(logit - top)
            block_lse = top + torch.log(total_exp)
            lse[r0:r1], possum[r0:r1], npos[r0:r1] = block_lse, block.possum, block.npos
            if inline_threshold is not None and block.threshold is not None:
                inline_threshold[r0:r1] = block.threshold
            if unit is not None:
                p = None if positive_logit is None else positive_logit[r0:r1]
                _, total, count = row_losses(block_lse, block.possum, block.npos, p)
                coef = row_coefficients(unit[r0:r1], block_lse, total, count, p)
                if coef.positive_logit is not None:
                    dpos[r0:r1] = coef.positive_logit
                if grad_query or grad_candidates:
                    inverse = torch.where(total_exp > 0, 1.0 / total_exp, torch.zeros_like(total_exp))
                    if block.positive_dense is None:  # the row scale goes to the (R, D) operands, not the block
                        _row_scaled_grads(block, coef.lse * inverse, coef.positive, c, scaled[r0:r1], dq, dc, r0)
                        continue
                    grad = _add_positive_grad_(block.logits.mul_((coef.lse * inverse)[:, None]), block, coef.positive)
                    if grad_query:
                        torch.mm(grad, c, out=dq[r0:r1])
                    if grad_candidates:
                        dc.addmm_(grad.T, scaled[r0:r1])
            continue
        running = q.new_full((r1 - r0,), float("-inf"))
        sums, counts = q.new_zeros(r1 - r0), q.new_zeros(r1 - r0)
        block_threshold = None if threshold is None else threshold[r0:r1]
        for c0 in range(0, m, cols):
            block = _block(scaled[r0:r1], c[c0 : c0 + cols], spec, r0, c0, top_k, block_threshold, buffer)
            top, total_exp = _exp_rows_(block.logits, shift)
            running = torch.logaddexp(running, top + torch.log(total_exp))
            sums += block.possum
            counts += block.npos
        lse[r0:r1], possum[r0:r1], npos[r0:r1] = running, sums, counts

    losses, _, _ = row_losses(lse, possum, npos, positive_logit)
    if cache and grad_query:
        dq.mul_(scale)
    if threshold is None and inline_threshold is not None:
        threshold = inline_threshold
    return Streamed(
        weighted_reduce(losses, weights, reduction),
        losses,
        lse,
        npos,
        q.new_empty(0) if threshold is None else threshold,
        dq,
        dc,
        dpos,
    )


def streaming_backward(
    q: Tensor,
    c: Tensor,
    spec: ColumnSpec,
    *,
    scale: float,
    top_k: int | None,
    threshold: Tensor | None,
    lse: Tensor,
    coef_lse: Tensor,
    coef_pos: Tensor,
    rows: int,
    cols: int,
    grad_query: bool,
    grad_candidates: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients with respect to ``q`` and ``c`` by recomputing every block (no N×M storage)."""
    n, m = q.shape[0], c.shape[0]
    scaled = q * scale
    dq = torch.zeros_like(q) if grad_query else None
    dc = torch.zeros_like(c) if grad_candidates else None
    buffer = block_buffer(q, min(rows, n), min(cols, m))
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        block_threshold = None if threshold is None else threshold[r0:r1]
        for c0 in range(0, m, cols):
            c_cols = c[c0 : c0 + cols]
            block = _block(scaled[r0:r1], c_cols, spec, r0, c0, top_k, block_threshold, buffer)
            grad = _softmax_grad_(block, lse[r0:r1], coef_lse[r0:r1], coef_pos[r0:r1])
            if dq is not None:
                dq[r0:r1].addmm_(grad, c_cols)
            if dc is not None:
                dc[c0 : c0 + cols].addmm_(grad.T, scaled[r0:r1])
    if dq is not None:
        dq.mul_(scale)
    return dq, dc


def naive_info_nce(
    q: Tensor,
    c: Tensor,
    spec: ColumnSpec,
    *,
    scale: float | Tensor,
    top_k: int | None,
    positive_logit: Tensor | None,
    weights: Tensor | None,
    reduction: str,
) -> Tensor:
    """Dense reference: builds the ``(N, M)`` logits and masks and lets autograd differentiate."""
    n, m = q.shape[0], c.shape[0]
    logits = q @ c.T * scale
    cols = torch.arange(m, device=q.device)
    positive = torch.zeros(n, m, dtype=torch.bool, device=q.device)
    if spec.positive_index is not None:
        positive |= cols[None, :] == spec.positive_index[:, None]
    if spec.labels is not None and spec.candidate_labels is not None:
        positive |= spec.labels[:, None] == spec.candidate_labels[None, :]
    if spec.positive_mask is not None:
        positive |= spec.positive_mask
    excluded = torch.zeros_like(positive)
    if spec.exclude_index is not None:
        excluded = cols[None, :] == spec.exclude_index[:, None]
    positive &= ~excluded
    negative = ~positive & ~excluded
    if spec.negative_mask is not None:
        negative &= spec.negative_mask
    if top_k is not None:
        ranked = logits.detach().masked_fill(~negative, float("-inf"))
        kth = torch.topk(ranked, top_k, dim=1).values[:, -1:]
        negative &= ranked >= kth
    denominator = positive | negative
    empty = ~denominator.any(dim=1, keepdim=True)
    kept = logits.masked_fill(~denominator, float("-inf")).masked_fill(empty, 0.0)
    lse = torch.logsumexp(kept, dim=1).masked_fill(empty.squeeze(1), float("-inf"))
    possum = torch.where(positive, logits, 0.0).sum(dim=1)
    losses, _, _ = row_losses(lse, possum, positive.sum(dim=1).to(logits.dtype), positive_logit)
    return weighted_reduce(losses, weights, reduction)
