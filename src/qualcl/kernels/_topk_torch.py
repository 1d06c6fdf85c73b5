"""Exact, tie-deterministic top-K selection in torch, and the streaming top-K over similarity blocks."""

from __future__ import annotations

import torch
from torch import Tensor

from qualcl.kernels._columns import CandidateFilter, drop_block_
from qualcl.kernels._native import native_available, native_topk_rows
from qualcl.kernels._rows import unit_rows

__all__ = [
    "block_topk",
    "finish_topk",
    "order_sorted_topk",
    "order_topk",
    "rank_bound",
    "scatter_rows",
    "screen",
    "screen_levels",
    "select_topk",
    "stable_topk",
    "streaming_topk",
    "topk_candidates",
]

GROUP = 16
"""Screening fan-out: a block's scores are screened by the maxima of 16-column groups, and those by the
maxima of 16-group (256-column) super-groups, so the compare-and-gather work after a block's matmul is
on tensors 256 times smaller than the block."""


def block_topk(scores: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """``torch.topk(scores, width, dim=1)`` of a wide block, read through its column groups' maxima.

    The ``width`` largest entries of a row lie in the ``width`` column groups (:data:`GROUP`
    slabs, :func:`_group_maxima`) with the largest maxima, and none is below the ``width``-th
    largest maximum: so one max pass, a ``torch.topk`` over ``W / GROUP`` maxima and a gather of
    those groups' members replace a ``torch.topk`` over all ``W`` columns. Rows whose ``width``-th
    and ``(width + 1)``-th group maxima are not strictly ordered (a tie, ``-inf`` padding) or that hold
    a NaN take ``torch.topk`` of the whole row. Blocks too narrow to gain (fewer than ``4 · width`` groups) take
    it whole.

    Args:
        scores: ``(R, W)`` contiguous values.
        width: ``1 <= width <= W``.

    Returns:
        ``(values (R, width), positions (R, width))``, sorted by value (descending): the same values as
        ``torch.topk``, and the same positions up to the order of equal values (as ``torch.topk`` leaves it).
    """
    rows = scores.shape[0]
    maxima = _group_maxima(scores)
    if maxima is None or maxima.shape[1] < 4 * width:
        return torch.topk(scores, width, dim=1)
    span = maxima.shape[1]
    top, group = torch.topk(maxima, width + 1, dim=1)
    threshold = top[:, width - 1]  # width groups have a maximum at least this large
    fallback = ~(threshold > top[:, width]) | top[:, 0].isnan()  # NaN maxima come first; NaN >= t is False
    group = group[:, :width]
    members = scores.view(rows, GROUP, span).gather(2, group[:, None, :].expand(rows, GROUP, width))
    at, slab, j = torch.nonzero(members >= threshold[:, None, None]).unbind(1)  # row-major: rows ascending
    counts = torch.bincount(at, minlength=rows)
    slot = torch.arange(at.shape[0], device=scores.device) - (counts.cumsum(0) - counts).index_select(0, at)
    size = max(int(counts.max()), width)
    values = scores.new_full((rows, size), float("-inf"))
    positions = torch.zeros((rows, size), dtype=torch.long, device=scores.device)
    values[at, slot] = members[at, slab, j]
    positions[at, slot] = slab * span + group[at, j]
    values, order = torch.topk(values, width, dim=1)
    positions = positions.gather(1, order)
    if bool(fallback.any()):
        redo = torch.nonzero(fallback).flatten()
        values[redo], positions[redo] = torch.topk(scores.index_select(0, redo), width, dim=1)
    return values, positions


def topk_candidates(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Unordered ``k + 1`` largest entries per row whose first ``k`` in :func:`order_topk` order are the top-``k``.

    ``torch.topk`` picks arbitrarily among values tied at the ``k``-th place; rows where the
    ``k``-th and ``(k + 1)``-th values tie (rare on real data) are settled by a stable sort of the
    row, so that the lowest positions win. Columns must be in ascending index order.

    Args:
        scores: ``(R, W)`` values.
        k: ``1 <= k``.

    Returns:
        ``(values (R, w), positions (R, w))`` with ``w = min(k + 1, W)``.
    """
    rows, width = scores.shape
    if k >= width:
        return scores, torch.arange(width, device=scores.device).expand(rows, width)
    values, positions = torch.topk(scores, k + 1, dim=1, sorted=False)
    tie = (values == values.amin(dim=1, keepdim=True)).sum(dim=1) >= 2
    if bool(tie.any()):
        tied = torch.nonzero(tie).flatten()
        tied_values, tied_positions = torch.sort(scores[tied], dim=1, descending=True, stable=True)
        values[tied], positions[tied] = tied_values[:, : k + 1], tied_positions[:, : k + 1]
    return values, positions


def order_topk(values: Tensor, positions: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first ``k`` entries per row by value (descending), then position (ascending)."""
    positions, order = torch.sort(positions, dim=1)
    values, order = torch.sort(values.gather(1, order), dim=1, descending=True, stable=True)
    return values[:, :k], positions.gather(1, order[:, :k])


def order_sorted_topk(values: Tensor, positions: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`order_topk` of rows already sorted by value (descending), sorting again only rows with ties.

    A row whose first ``k`` values are all distinct is in order already; the others (equal values,
    ``-inf`` padding) go through :func:`order_topk`. The ``k``-th and ``(k + 1)``-th values of a row
    must differ, or be settled (by a stable sort) already.
    """
    head = values[:, :k]
    tied = (head[:, 1:] == head[:, :-1]).any(dim=1)
    if not bool(tied.any()):
        return head, positions[:, :k]
    rows = torch.nonzero(tied).flatten()
    head, chosen = head.clone(), positions[:, :k].clone()
    head[rows], chosen[rows] = order_topk(values.index_select(0, rows), positions.index_select(0, rows), k)
    return head, chosen


def stable_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of each row, ordered by value (descending) then position (ascending).

    Unlike ``torch.topk``, the order of equal values is defined: among equal values the lowest
    positions win and come first.

    Args:
        scores: ``(R, W)`` values (columns in ascending index order).
        k: ``1 <= k``; at most ``W`` entries are returned.

    Returns:
        ``(values (R, min(k, W)), positions (R, min(k, W)))``.
    """
    return order_topk(*topk_candidates(scores, k), k)


def select_topk(values: Tensor, columns: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best entries per row by value (descending), then column (ascending), in that order.

    Like :func:`stable_topk`, but the tie-break key is given (``columns``, any order) instead of
    the position; padding is ``(-inf, -1)``.

    Args:
        values: ``(R, W)`` values.
        columns: ``(R, W)`` int64 column of each value (distinct within a row, except padding).
        k: ``1 <= k``.

    Returns:
        ``(values (R, min(k, W)), columns (R, min(k, W)))``.
    """
    if values.shape[1] > k:
        best, at = torch.topk(values, k + 1, dim=1, sorted=False)
        cols = columns.gather(1, at)
        tie = (best == best.amin(dim=1, keepdim=True)).sum(dim=1) >= 2  # k-th and (k + 1)-th equal
        if bool(tie.any()):
            rows = torch.nonzero(tie).flatten()
            tied_cols, order = torch.sort(columns[rows], dim=1)
            tied_values, order2 = torch.sort(values[rows].gather(1, order), dim=1, descending=True, stable=True)
            best[rows], cols[rows] = tied_values[:, : k + 1], tied_cols.gather(1, order2)[:, : k + 1]
        values, columns = best, cols
    return order_topk(values, columns, k)


def finish_topk(values: Tensor, indices: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
    """Mark padding (``-inf`` after the sign flip) with index ``-1`` and undo the sign flip."""
    indices = indices.masked_fill(values == float("-inf"), -1)
    return (values if largest else -values), indices


def _group_maxima(x: Tensor) -> Tensor | None:
    """``(R, W / GROUP)`` maxima of the column groups ``j, j + W/GROUP, ...`` of ``(R, W)`` ``x``, or ``None``.

    One vectorised elementwise-max pass over ``GROUP`` contiguous slabs; ``None`` when ``W`` is not a
    multiple of ``GROUP``.
    """
    rows, width = x.shape
    if width < GROUP or width % GROUP:
        return None
    return x.view(rows, GROUP, width // GROUP).amax(dim=1)


def screen_levels(scores: Tensor) -> list[Tensor]:
    """``[scores, group maxima, super-group maxima]`` of a contiguous ``(R, W)`` block, as far as ``W`` divides."""
    levels = [scores]
    while len(levels) < 3:
        maxima = _group_maxima(levels[-1])
        if maxima is None:
            break
        levels.append(maxima)
    return levels


def rank_bound(levels: list[Tensor], k: int) -> Tensor:
    """A per-row lower bound on the ``k``-th largest score of the block, read from its group maxima.

    The ``k``-th largest of ``k`` or more disjoint groups' maxima: ``k`` entries are at least that
    large. The coarsest level with at least ``4k`` groups is used (a tight bound for one small
    ``topk``), else the finest level that has ``k`` columns. The result is at least the lowest finite
    value, so dropped (``-inf``) entries never reach it.

    Args:
        levels: :func:`screen_levels` of an ``(R, W)`` block.
        k: Entries selected per row.

    Returns:
        ``(R,)`` thresholds (candidates are ``scores >= threshold``).
    """
    scores = levels[0]
    lowest = torch.finfo(scores.dtype).min
    wide = [x for x in levels if x.shape[1] >= k]
    if not wide:
        return scores.new_full((scores.shape[0],), lowest)
    coarse = [x for x in wide if x.shape[1] >= 4 * k]
    x = coarse[-1] if coarse else wide[-1]
    bound = x.amax(dim=1) if k == 1 else torch.topk(x, k, dim=1, sorted=False).values.amin(dim=1)
    return bound.clamp_min(lowest)


def _members(x: Tensor, at: Tensor, group: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row, column and value of the members of the groups ``(at, group)`` of ``x`` that reach ``threshold[at]``."""
    width = x.shape[1]
    groups = width // GROUP
    offsets = torch.arange(0, width, groups, device=x.device)  # (GROUP,): the members of a group
    position = ((at * width + group)[:, None] + offsets).flatten()  # (H·GROUP,) into the flat block
    values = x.view(-1).index_select(0, position)
    keep = torch.nonzero((values.view(-1, GROUP) >= threshold.index_select(0, at)[:, None]).flatten()).flatten()
    position = position.index_select(0, keep)
    row = torch.div(position, width, rounding_mode="floor")
    return row, position - row * width, values.index_select(0, keep)


def screen(levels: list[Tensor], threshold: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row, column and value of the entries of the block at or above ``threshold`` ``(R,)``.

    The coarsest level is compared whole; each finer level is read only inside the groups that
    reached the threshold, so a block with few hits costs two max passes and small gathers.
    Entries come grouped by row, in no particular column order.
    """
    top = levels[-1]
    at, index = torch.nonzero(top >= threshold[:, None]).unbind(1)
    values = top[at, index]
    for x in reversed(levels[:-1]):
        at, index, values = _members(x, at, index, threshold)
    return at, index, values


def scatter_rows(rows: Tensor, columns: Tensor, values: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Each row's ``(column, value)`` entries as ``(values (n, W), columns (n, W))``, padded with ``(-inf, -1)``.

    Entries may come in any row order; ``W`` is the most entries of one row (at least 1). The order
    within a row is not kept (callers select by value, then column).
    """
    order = torch.argsort(rows)
    rows, columns, values = rows[order], columns[order], values[order]
    counts = torch.bincount(rows, minlength=n)
    slot = torch.arange(rows.shape[0], device=rows.device) - (counts.cumsum(0) - counts)[rows]
    width = max(int(counts.max()), 1) if rows.numel() else 1
    padded = values.new_full((n, width), float("-inf"))
    where = torch.full((n, width), -1, dtype=torch.long, device=rows.device)
    padded[rows, slot], where[rows, slot] = values, columns
    return padded, where


class _RowBlock:
    """Running top-``k`` of ``R`` query rows while candidate chunks stream past.

    The first block sets each row's threshold to a lower bound on its ``k``-th value
    (:func:`rank_bound`); every block then contributes the entries at or above the threshold
    (:func:`screen`), kept as pending (row, column, value) candidates and merged once about ``k`` per
    row are pending. A merge selects by (value descending, column ascending), so ties keep the lower
    column, and raises the threshold to just above the new ``k``-th value (later columns lose ties).
    Memory O(R·k). Subclasses change :meth:`first_threshold` and :meth:`merge`
    (:class:`qualcl.kernels._topk_screen._Screen`).
    """

    def __init__(self, rows: int, k: int, like: Tensor) -> None:
        self.k = k
        self.values = like.new_full((rows, k), float("-inf"))
        self.indices = torch.full((rows, k), -1, dtype=torch.long, device=like.device)
        self.threshold: Tensor | None = None  # (R,): candidates are scores >= threshold
        self.pending: list[tuple[Tensor, Tensor, Tensor]] = []
        self.pending_count = 0
        self.capacity = max(k * rows, 4096)

    def first_threshold(self, levels: list[Tensor]) -> Tensor:
        """Each row's threshold from the first block's :func:`screen_levels`."""
        return rank_bound(levels, self.k)

    def add(self, scores: Tensor, c0: int) -> None:
        """Take the candidates of the contiguous ``(R, W)`` block of columns ``c0:c0 + W``."""
        levels = screen_levels(scores)
        if self.threshold is None:
            self.threshold = self.first_threshold(levels)
        at, cols, values = screen(levels, self.threshold)
        if at.numel():
            self.pending.append((at, cols + c0, values))
            self.pending_count += at.numel()
            self.check_pending()
            if self.pending_count >= self.capacity:
                self.flush()

    def check_pending(self) -> None:
        """Called after each block's candidates are queued (a subclass may give up here)."""

    def flush(self) -> None:
        """Merge the pending candidates into the running state and raise the thresholds."""
        if not self.pending:
            return
        rows, cols, vals = (torch.cat(parts) for parts in zip(*self.pending, strict=True))
        self.pending, self.pending_count = [], 0
        values, indices = scatter_rows(rows, cols, vals, self.values.shape[0])
        self.merge(
            torch.cat([self.values, values.to(self.values.dtype)], dim=1), torch.cat([self.indices, indices], dim=1)
        )

    def merge(self, values: Tensor, indices: Tensor) -> None:
        """Keep the top-``k`` of the state and the new candidates; the threshold rises above the ``k``-th."""
        assert self.threshold is not None
        k = self.k
        self.values, self.indices = select_topk(values, indices, k)
        kth = self.values[:, k - 1]
        above = torch.nextafter(kth, kth.new_tensor(float("inf")))
        self.threshold = torch.where(kth > float("-inf"), above, self.threshold)


def streaming_topk(
    q: Tensor,
    c: Tensor,
    filt: CandidateFilter,
    k: int,
    *,
    largest: bool,
    scale: float,
    rows: int,
    cols: int,
    normalize: bool = False,
    norms: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row top-``k`` of ``scale * q @ ĉ.T`` over the kept columns, in blocks of ``rows × cols``.

    The candidates stream past once, ``cols`` at a time (``ĉ``: each chunk converted to ``q``'s
    dtype and, with ``normalize``, L2-normalised row by row); every block of ``rows`` queries meets
    each chunk while it is in cache and keeps a running top-``k`` (:class:`_RowBlock`): only the
    scores at or above its running threshold are gathered, found through the maxima of column
    groups, so selection costs two max passes, not a sort. With one chunk (``cols >= M``) each row
    block is selected at once (:func:`_single_block_topk`, :func:`block_topk`). Memory O(N·k + rows·cols + cols·D).
    Rows with fewer than ``k`` kept columns are padded with ``-inf`` (``+inf`` for
    ``largest=False``) and index ``-1``.

    Args:
        q: ``(N, D)`` queries (already in the compute dtype, normalised if wanted).
        c: ``(M, D)`` candidates, any floating dtype.
        filt: Columns each row may select.
        k: Entries per row, ``k <= M``.
        largest: Most (True) or least similar first.
        scale: Factor on the similarities.
        rows: Queries per block.
        cols: Candidates per chunk.
        normalize: L2-normalise the candidate chunks.
        norms: ``(M,)`` the candidates' row norms in ``q``'s dtype, computed once by the caller
            (``torch.linalg.vector_norm(c, dim=1)``): with ``normalize``, each chunk is divided by
            them instead of computing them again (the same values as ``F.normalize``).

    Returns:
        ``(values (N, k), indices (N, k))``.
    """
    n, m = q.shape[0], c.shape[0]
    if cols >= m:  # one chunk: row blocks against every column
        c = unit_rows(c.to(q.dtype), norms) if normalize else c.to(q.dtype)
        return _single_block_topk(q, c, filt, k, largest=largest, scale=scale, rows=rows)
    sign = scale if largest else -scale
    blocks = [(r0, min(r0 + rows, n), _RowBlock(min(r0 + rows, n) - r0, k, q)) for r0 in range(0, n, rows)]
    score_buffer = q.new_empty(min(rows, n) * cols)
    for c0 in range(0, m, cols):
        chunk = c[c0 : c0 + cols].to(q.dtype)
        if normalize:
            chunk = unit_rows(chunk, None if norms is None else norms[c0 : c0 + cols])
        width = chunk.shape[0]
        for r0, r1, block in blocks:
            scores = torch.mm(q[r0:r1], chunk.T, out=score_buffer[: (r1 - r0) * width].view(r1 - r0, width))
            if sign != 1.0:
                scores.mul_(sign)
            drop_block_(scores, filt, r0, c0)
            block.add(scores, c0)
    values = q.new_empty(n, k)
    indices = torch.empty(n, k, dtype=torch.long, device=q.device)
    for r0, r1, block in blocks:
        block.flush()
        values[r0:r1], indices[r0:r1] = block.values, block.indices
    return finish_topk(values, indices, largest)


def _scores(
    q: Tensor, c: Tensor, filt: CandidateFilter, r0: int, r1: int, c0: int, scale: float, largest: bool, buffer: Tensor
) -> Tensor:
    """``±scale * q[r0:r1] @ c.T`` with the dropped entries at ``-inf`` (negated for ``largest=False``).

    Written into ``buffer`` (one for every block: a fresh block would be page-faulted anew).
    """
    scores = torch.mm(q[r0:r1], c.T, out=buffer[: (r1 - r0) * c.shape[0]].view(r1 - r0, c.shape[0]))
    if scale != 1.0 or not largest:
        scores.mul_(scale if largest else -scale)
    drop_block_(scores, filt, r0, c0)
    return scores


def _single_block_topk(
    q: Tensor, c: Tensor, filt: CandidateFilter, k: int, *, largest: bool, scale: float, rows: int
) -> tuple[Tensor, Tensor]:
    """Row blocks against all columns: one selection per block, ties and ordering settled at the end.

    float32 on a CPU with the compiled kernel (:mod:`qualcl.kernels._native`): each block's rows are
    selected in rank order by it, while the block is in cache. Otherwise one :func:`block_topk` per block:
    each block writes its sorted top-``k + 1`` into shared buffers (small per-block ops are what
    costs on a busy CPU). Rows whose ``k``-th and ``(k + 1)``-th values tie get their block
    recomputed (same shapes, so the same bits) and settled by a stable sort; then the rows with equal
    values among their top ``k`` are ordered by (value, lower column) (:func:`order_sorted_topk`; the
    others are in order already).
    """
    n, m = q.shape[0], c.shape[0]
    buffer = q.new_empty(min(rows, n) * m)
    if native_available(q):
        values = q.new_empty(n, k)
        positions = torch.empty(n, k, dtype=torch.long, device=q.device)
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            native_topk_rows(_scores(q, c, filt, r0, r1, 0, scale, largest, buffer), k, values[r0:r1], positions[r0:r1])
        return finish_topk(values, positions, largest)
    width = min(k + 1, m)
    values = q.new_empty(n, width)
    positions = torch.empty(n, width, dtype=torch.long, device=q.device)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        values[r0:r1], positions[r0:r1] = block_topk(_scores(q, c, filt, r0, r1, 0, scale, largest, buffer), width)
    if width > k:
        tie = values[:, k - 1] == values[:, k]
        if bool(tie.any()):
            tied = torch.nonzero(tie).flatten()
            for r0 in torch.unique(torch.div(tied, rows, rounding_mode="floor") * rows).tolist():
                r1 = min(r0 + rows, n)
                block_rows = tied[(tied >= r0) & (tied < r1)]
                scores = _scores(q, c, filt, r0, r1, 0, scale, largest, buffer)[block_rows - r0]
                tied_values, tied_positions = torch.sort(scores, dim=1, descending=True, stable=True)
                values[block_rows], positions[block_rows] = tied_values[:, :width], tied_positions[:, :width]
    return finish_topk(*order_sorted_topk(values, positions, k), largest)
