# mypy: ignore-errors
"""Triton kernels (imported only when a Triton path runs; launchers in ``_triton_launch``).

Every kernel computes a tile of logits the same way, ``tl.dot(q_tile, trans(c_tile)) * scale`` with
the same block sizes, so the top-K threshold found by one kernel compares bit for bit with the
logits recomputed by the others. Column rules (positives, exclusions, masks, labels) are evaluated
per tile from per-row / per-column vectors; dense ``(N, M)`` masks are read as uint8 tiles.
Design: ``docs/performance.md`` ("Implementations") (online LSE, FlashAttention-2 split backward, exact
threshold-filter top-K without atomics).
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _load_tile(ptr, idx, limit, stride, offs_d, D, UPCAST: tl.constexpr):
    """Rows ``idx`` of a row-major ``(limit, D)`` matrix as a ``(len(idx), BD)`` tile (zeros outside)."""
    tile = tl.load(
        ptr + idx.to(tl.int64)[:, None] * stride + offs_d[None, :],
        mask=(idx[:, None] < limit) & (offs_d[None, :] < D),
        other=0.0,
    )
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _row_vectors(
    pidx_ptr,
    lab_ptr,
    excl_ptr,
    thr_ptr,
    rows,
    rmask,
    HAS_PIDX: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HAS_EXCL: tl.constexpr,
    HAS_TOPK: tl.constexpr,
):
    """Per-row positive index, label, excluded index and top-K threshold (placeholders when absent)."""
    pidx = rows.to(tl.int64)
    if HAS_PIDX:
        pidx = tl.load(pidx_ptr + rows, mask=rmask, other=-1)
    lab = rows.to(tl.int64)
    if HAS_LABELS:
        lab = tl.load(lab_ptr + rows, mask=rmask, other=0)
    excl = rows.to(tl.int64)
    if HAS_EXCL:
        excl = tl.load(excl_ptr + rows, mask=rmask, other=-1)
    thr = tl.zeros(rows.shape, tl.float32)
    if HAS_TOPK:
        thr = tl.load(thr_ptr + rows, mask=rmask, other=0.0)
    return pidx, lab, excl, thr


@triton.jit
def _logits(q_tile, c_tile, scale, PRECISION: tl.constexpr):
    return tl.dot(q_tile, tl.trans(c_tile), input_precision=PRECISION) * scale


@triton.jit
def _mask_tile(ptr, rows, cols, stride, valid):
    """A uint8 tile of a dense ``(N, M)`` bool mask as a boolean tensor (False outside ``valid``)."""
    return tl.load(ptr + rows.to(tl.int64)[:, None] * stride + cols[None, :], mask=valid, other=0) != 0


@triton.jit
def _column_sets(
    rows,
    cols,
    valid,
    pidx,
    lab,
    excl,
    clab_ptr,
    pmask_ptr,
    stride_pm,
    nmask_ptr,
    stride_nm,
    M,
    HAS_PIDX: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HAS_PMASK: tl.constexpr,
    HAS_EXCL: tl.constexpr,
    HAS_NMASK: tl.constexpr,
):
    """``(positive, negative)`` boolean tiles of InfoNCE's column rules (before top-K)."""
    pos = cols[None, :] < 0  # all False, right shape after the broadcasts below
    pos = pos & valid
    if HAS_PIDX:
        pos = pos | (cols[None, :] == pidx[:, None])
    if HAS_LABELS:
        clab = tl.load(clab_ptr + cols, mask=cols < M, other=0)
        pos = pos | (lab[:, None] == clab[None, :])
    if HAS_PMASK:
        pos = pos | _mask_tile(pmask_ptr, rows, cols, stride_pm, valid)
    other = valid
    if HAS_EXCL:
        kept = cols[None, :] != excl[:, None]
        pos = pos & kept
        other = other & kept
    pos = pos & valid
    neg = other & (pos == 0)
    if HAS_NMASK:
        neg = neg & _mask_tile(nmask_ptr, rows, cols, stride_nm, valid)
    return pos, neg


@triton.jit
def info_nce_forward_kernel(
    q_ptr,
    c_ptr,
    lse_ptr,
    possum_ptr,
    npos_ptr,
    thr_ptr,
    pidx_ptr,
    lab_ptr,
    clab_ptr,
    pmask_ptr,
    excl_ptr,
    nmask_ptr,
    N,
    M,
    D,
    stride_q,
    stride_c,
    stride_pm,
    stride_nm,
    scale,
    cols_per_split,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    HAS_PIDX: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HAS_PMASK: tl.constexpr,
    HAS_EXCL: tl.constexpr,
    HAS_NMASK: tl.constexpr,
    HAS_TOPK: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Row statistics (online log-sum-exp, positive sum and count) of one row block × column split."""
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < N
    offs_d = tl.arange(0, BD)
    q_tile = _load_tile(q_ptr, rows, N, stride_q, offs_d, D, UPCAST)
    pidx, lab, excl, thr = _row_vectors(
        pidx_ptr, lab_ptr, excl_ptr, thr_ptr, rows, rmask, HAS_PIDX, HAS_LABELS, HAS_EXCL, HAS_TOPK
    )

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    possum = tl.zeros([BM], tl.float32)
    npos = tl.zeros([BM], tl.float32)
    col_start = pid_s * cols_per_split
    col_end = tl.minimum(M, col_start + cols_per_split)
    for start in range(col_start, col_end, BN):
        cols = start + tl.arange(0, BN)
        valid = rmask[:, None] & (cols[None, :] < col_end)
        c_tile = _load_tile(c_ptr, cols, M, stride_c, offs_d, D, UPCAST)
        s = _logits(q_tile, c_tile, scale, PRECISION)
        pos, neg = _column_sets(
            rows, cols, valid, pidx, lab, excl, clab_ptr, pmask_ptr, stride_pm, nmask_ptr, stride_nm, M,
            HAS_PIDX, HAS_LABELS, HAS_PMASK, HAS_EXCL, HAS_NMASK,
        )  # fmt: skip
        if HAS_TOPK:
            neg = neg & (s >= thr[:, None])
        kept = tl.where(pos | neg, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(kept, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2((m_i - m_safe) * LOG2E) + tl.sum(tl.exp2((kept - m_safe[:, None]) * LOG2E), 1)
        m_i = m_new
        possum += tl.sum(tl.where(pos, s, 0.0), 1)
        npos += tl.sum(pos.to(tl.float32), 1)
    lse = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
    out = pid_s * N + rows
    tl.store(lse_ptr + out, lse, mask=rmask)
    tl.store(possum_ptr + out, possum, mask=rmask)
    tl.store(npos_ptr + out, npos, mask=rmask)


@triton.jit
def _grad_tile(s, pos, neg, lse, coef_lse, coef_pos, thr, HAS_TOPK: tl.constexpr):
    """``dL/dlogits`` of a tile: ``coef_lse * softmax`` on the denominator plus ``coef_pos`` on positives."""
    if HAS_TOPK:
        neg = neg & (s >= thr[:, None])
    lse_safe = tl.where(lse == float("-inf"), 0.0, lse)
    prob = tl.where(pos | neg, tl.exp2((s - lse_safe[:, None]) * LOG2E), 0.0)
    return prob * coef_lse[:, None] + tl.where(pos, coef_pos[:, None], 0.0)


@triton.jit
def info_nce_grad_query_kernel(
    q_ptr,
    c_ptr,
    dq_ptr,
    lse_ptr,
    coef_lse_ptr,
    coef_pos_ptr,
    thr_ptr,
    pidx_ptr,
    lab_ptr,
    clab_ptr,
    pmask_ptr,
    excl_ptr,
    nmask_ptr,
    N,
    M,
    D,
    stride_q,
    stride_c,
    stride_pm,
    stride_nm,
    scale,
    cols_per_split,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    HAS_PIDX: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HAS_PMASK: tl.constexpr,
    HAS_EXCL: tl.constexpr,
    HAS_NMASK: tl.constexpr,
    HAS_TOPK: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``dq`` of one row block × column split (FlashAttention-2 split: rows own their accumulator)."""
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < N
    offs_d = tl.arange(0, BD)
    q_tile = _load_tile(q_ptr, rows, N, stride_q, offs_d, D, UPCAST)
    pidx, lab, excl, thr = _row_vectors(
        pidx_ptr, lab_ptr, excl_ptr, thr_ptr, rows, rmask, HAS_PIDX, HAS_LABELS, HAS_EXCL, HAS_TOPK
    )
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    coef_lse = tl.load(coef_lse_ptr + rows, mask=rmask, other=0.0)
    coef_pos = tl.load(coef_pos_ptr + rows, mask=rmask, other=0.0)

    acc = tl.zeros([BM, BD], tl.float32)
    col_start = pid_s * cols_per_split
    col_end = tl.minimum(M, col_start + cols_per_split)
    for start in range(col_start, col_end, BN):
        cols = start + tl.arange(0, BN)
        valid = rmask[:, None] & (cols[None, :] < col_end)
        c_tile = _load_tile(c_ptr, cols, M, stride_c, offs_d, D, UPCAST)
        s = _logits(q_tile, c_tile, scale, PRECISION)
        pos, neg = _column_sets(
            rows, cols, valid, pidx, lab, excl, clab_ptr, pmask_ptr, stride_pm, nmask_ptr, stride_nm, M,
            HAS_PIDX, HAS_LABELS, HAS_PMASK, HAS_EXCL, HAS_NMASK,
        )  # fmt: skip
        grad = _grad_tile(s, pos, neg, lse, coef_lse, coef_pos, thr, HAS_TOPK)
        acc += tl.dot(grad.to(c_tile.dtype), c_tile, input_precision=PRECISION)
    out = (pid_s * N + rows).to(tl.int64)
    tl.store(dq_ptr + out[:, None] * D + offs_d[None, :], acc * scale, mask=rmask[:, None] & (offs_d[None, :] < D))


@triton.jit
def info_nce_grad_candidates_kernel(
    q_ptr,
    c_ptr,
    dc_ptr,
    lse_ptr,
    coef_lse_ptr,
    coef_pos_ptr,
    thr_ptr,
    pidx_ptr,
    lab_ptr,
    clab_ptr,
    pmask_ptr,
    excl_ptr,
    nmask_ptr,
    N,
    M,
    D,
    stride_q,
    stride_c,
    stride_pm,
    stride_nm,
    scale,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    HAS_PIDX: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HAS_PMASK: tl.constexpr,
    HAS_EXCL: tl.constexpr,
    HAS_NMASK: tl.constexpr,
    HAS_TOPK: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``dc`` of one column block, looping over every row tile (no atomics)."""
    pid_n = tl.program_id(0)
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < M
    offs_d = tl.arange(0, BD)
    c_tile = _load_tile(c_ptr, cols, M, stride_c, offs_d, D, UPCAST)
    acc = tl.zeros([BN, BD], tl.float32)
    for start in range(0, N, BM):
        rows = start + tl.arange(0, BM)
        rmask = rows < N
        valid = rmask[:, None] & cmask[None, :]
        q_tile = _load_tile(q_ptr, rows, N, stride_q, offs_d, D, UPCAST)
        pidx, lab, excl, thr = _row_vectors(
            pidx_ptr, lab_ptr, excl_ptr, thr_ptr, rows, rmask, HAS_PIDX, HAS_LABELS, HAS_EXCL, HAS_TOPK
        )
        lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
        coef_lse = tl.load(coef_lse_ptr + rows, mask=rmask, other=0.0)
        coef_pos = tl.load(coef_pos_ptr + rows, mask=rmask, other=0.0)
        s = _logits(q_tile, c_tile, scale, PRECISION)
        pos, neg = _column_sets(
            rows, cols, valid, pidx, lab, excl, clab_ptr, pmask_ptr, stride_pm, nmask_ptr, stride_nm, M,
            HAS_PIDX, HAS_LABELS, HAS_PMASK, HAS_EXCL, HAS_NMASK,
        )  # fmt: skip
        grad = _grad_tile(s, pos, neg, lse, coef_lse, coef_pos, thr, HAS_TOPK)
        acc += tl.dot(tl.trans(grad.to(q_tile.dtype)), q_tile, input_precision=PRECISION)
    tl.store(
        dc_ptr + cols.to(tl.int64)[:, None] * D + offs_d[None, :],
        acc * scale,
        mask=cmask[:, None] & (offs_d[None, :] < D),
    )


@triton.jit
def _kept_logits(
    q_tile,
    c_tile,
    rows,
    cols,
    valid,
    didx,
    excl,
    lab,
    clab_ptr,
    dmask_ptr,
    stride_dm,
    kmask_ptr,
    stride_km,
    M,
    scale,
    sign,
    HAS_DIDX: tl.constexpr,
    HAS_EXCL: tl.constexpr,
    LABEL_MODE: tl.constexpr,
    HAS_DMASK: tl.constexpr,
    HAS_KMASK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``sign * logits`` of a tile with dropped or out-of-range entries at ``-inf``."""
    s = _logits(q_tile, c_tile, scale, PRECISION) * sign
    keep = valid
    if HAS_DIDX:
        keep = keep & (cols[None, :] != didx[:, None])
    if HAS_EXCL:
        keep = keep & (cols[None, :] != excl[:, None])
    if LABEL_MODE != 0:
        clab = tl.load(clab_ptr + cols, mask=cols < M, other=0)
        same = lab[:, None] == clab[None, :]
        if LABEL_MODE == 1:
            keep = keep & (same == 0)
        else:
            keep = keep & same
    if HAS_DMASK:
        keep = keep & (_mask_tile(dmask_ptr, rows, cols, stride_dm, valid) == 0)
    if HAS_KMASK:
        keep = keep & _mask_tile(kmask_ptr, rows, cols, stride_km, valid)
    return tl.where(keep, s, float("-inf"))


@triton.jit
def _insert_max(best, slots, tile_max):
    """Replace the smallest of the per-row list ``best`` by ``tile_max`` where that is larger."""
    smallest = tl.min(best, 1)
    where_min = tl.argmin(best, 1)
    hit = (slots[None, :] == where_min[:, None]) & (tile_max > smallest)[:, None]
    return tl.where(hit, tile_max[:, None], best)


@triton.jit
def topk_filter_kernel(
    q_ptr,
    c_ptr,
    buf_val_ptr,
    buf_idx_ptr,
    count_ptr,
    didx_ptr,
    excl_ptr,
    lab_ptr,
    clab_ptr,
    dmask_ptr,
    kmask_ptr,
    N,
    M,
    D,
    K,
    stride_q,
    stride_c,
    stride_dm,
    stride_km,
    scale,
    sign,
    cols_per_split,
    capacity,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    KP: tl.constexpr,
    HAS_DIDX: tl.constexpr,
    HAS_EXCL: tl.constexpr,
    LABEL_MODE: tl.constexpr,
    HAS_DMASK: tl.constexpr,
    HAS_KMASK: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Exact top-K candidates by threshold filtering (performance.md §6.3, tier 2).

    Each row keeps the ``K`` largest tile maxima seen so far; their minimum ``tau`` is a lower bound
    of the row's final ``K``-th value (``K`` distinct tiles hold an element ``>= tau``), so entries
    below it can be dropped exactly. A seed pass over the first ``KP`` tiles makes ``tau`` useful
    from the start. Survivors are compacted in column order into a per-row buffer of ``capacity``
    slots (counters live in registers: each program owns its rows, no atomics); the launcher selects
    the top-K from the buffer and recomputes rows whose count exceeded the capacity.
    """
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < N
    offs_d = tl.arange(0, BD)
    q_tile = _load_tile(q_ptr, rows, N, stride_q, offs_d, D, UPCAST)
    didx, lab, excl, _ = _row_vectors(
        didx_ptr, lab_ptr, excl_ptr, didx_ptr, rows, rmask, HAS_DIDX, LABEL_MODE != 0, HAS_EXCL, False
    )
    slots = tl.arange(0, KP)
    best = tl.where(slots[None, :] < K, float("-inf"), float("inf")) + tl.zeros([BM, KP], tl.float32)

    col_start = pid_s * cols_per_split
    col_end = tl.minimum(M, col_start + cols_per_split)
    seed_end = tl.minimum(col_end, col_start + KP * BN)
    for start in range(col_start, seed_end, BN):
        cols = start + tl.arange(0, BN)
        valid = rmask[:, None] & (cols[None, :] < col_end)
        c_tile = _load_tile(c_ptr, cols, M, stride_c, offs_d, D, UPCAST)
        s = _kept_logits(
            q_tile, c_tile, rows, cols, valid, didx, excl, lab, clab_ptr, dmask_ptr, stride_dm, kmask_ptr,
            stride_km, M, scale, sign, HAS_DIDX, HAS_EXCL, LABEL_MODE, HAS_DMASK, HAS_KMASK, PRECISION,
        )  # fmt: skip
        best = _insert_max(best, slots, tl.max(s, 1))

    count = tl.zeros([BM], tl.int32)
    base = (pid_s * N + rows).to(tl.int64) * capacity
    for start in range(col_start, col_end, BN):
        cols = start + tl.arange(0, BN)
        valid = rmask[:, None] & (cols[None, :] < col_end)
        c_tile = _load_tile(c_ptr, cols, M, stride_c, offs_d, D, UPCAST)
        s = _kept_logits(
            q_tile, c_tile, rows, cols, valid, didx, excl, lab, clab_ptr, dmask_ptr, stride_dm, kmask_ptr,
            stride_km, M, scale, sign, HAS_DIDX, HAS_EXCL, LABEL_MODE, HAS_DMASK, HAS_KMASK, PRECISION,
        )  # fmt: skip
        fresh = tl.where(start >= seed_end, tl.max(s, 1), float("-inf"))
        best = _insert_max(best, slots, fresh)
        tau = tl.min(best, 1)
        cand = (s >= tau[:, None]) & (s > float("-inf"))
        taken = cand.to(tl.int32)
        slot = count[:, None] + tl.cumsum(taken, 1) - 1
        store = cand & (slot < capacity)
        offset = base[:, None] + slot
        tl.store(buf_val_ptr + offset, s, mask=store)
        tl.store(buf_idx_ptr + offset, cols[None, :] + tl.zeros([BM, BN], tl.int32), mask=store)
        count += tl.sum(taken, 1)
    tl.store(count_ptr + pid_s * N + rows, count, mask=rmask)
