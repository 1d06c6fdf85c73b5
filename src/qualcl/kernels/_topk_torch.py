"""Exact, tie-deterministic top-K selection in torch, and the streaming top-K over similarity blocks."""

from __future__ import annotations

import torch
from torch import Tensor

from qualcl.kernels._columns import CandidateFilter, drop_block_

__all__ = [
    "finish_topk",
    "merge_topk",
    "order_topk",
    "select_topk",
    "stable_topk",
    "streaming_topk",
    "topk_candidates",
]

ESTIMATE_SLACK = 2.0
"""An estimated threshold aims at this many times ``k`` candidates per row over all columns."""
MIN_ESTIMATE_RANK = 16
"""Below this rank in the first chunk an estimate is too noisy: the first chunk's ``k``-th value is used instead."""
GROUP = 16
"""Column slabs per block whose elementwise maximum screens it (only groups reaching the threshold are read)."""
GROUPS_PER_RANK = 4
"""The first chunk's threshold is read from ``GROUPS_PER_RANK * rank`` column-group maxima (one cheap pass)."""


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


def merge_topk(first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor]:
    """Merge two top-K lists whose indices are all lower in ``first`` than in ``second``."""
    values = torch.cat([first[0], second[0]], dim=1)
    indices = torch.cat([first[1], second[1]], dim=1)
    values, order = torch.sort(values, dim=1, descending=True, stable=True)
    return values[:, :k], indices.gather(1, order[:, :k])


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


def filter_rows(filt: CandidateFilter, rows: Tensor) -> CandidateFilter:
    """The filter restricted to the given query rows (``(P,)`` int64)."""

    def pick(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[rows]

    return filt._replace(
        drop_index=pick(filt.drop_index),
        exclude_index=pick(filt.exclude_index),
        labels=pick(filt.labels),
        drop_mask=pick(filt.drop_mask),
        keep_mask=pick(filt.keep_mask),
    )


def estimate_threshold(scores: Tensor, k: int, total: int, *, estimate: bool = True) -> Tensor:
    """A per-row lower bound on the ``k``-th largest score, read from the first block of a row.

    The ``r``-th largest of the maxima of ``4r`` column groups of the ``(R, W)`` block (one
    elementwise-max pass and a ``topk`` over ``4r`` values): ``r`` group maxima are at least that
    large, so with ``r = k`` it is a guaranteed lower bound on the row's ``k``-th value. With
    ``estimate`` and a block much narrower than the row (``total`` columns), ``r`` is lowered to
    about ``2k`` candidates expected over the whole row: a tighter, *unverified* bound that the
    caller checks (at least ``k`` scores reached it) and otherwise recomputes the row. The result is
    at least the lowest finite value, so ``-inf`` (dropped) entries never pass it.

    Args:
        scores: ``(R, W)`` block, columns ``0..W - 1`` of rows that have ``total`` columns.
        k: Entries selected per row.
        total: Columns of the whole row.
        estimate: Allow the unverified estimate (else ``r = k``).

    Returns:
        ``(R,)`` thresholds (keep ``scores >= threshold``).
    """
    rows, width = scores.shape
    lowest = torch.finfo(scores.dtype).min
    rank = k
    wanted = round(ESTIMATE_SLACK * k * width / total)
    if estimate and MIN_ESTIMATE_RANK <= wanted < k:
        rank = wanted
    groups = min(width, GROUPS_PER_RANK * rank)
    if groups < rank:  # the block holds fewer than `rank` columns: no bound
        return scores.new_full((rows,), lowest)
    size = width // groups
    if size == 1:
        maxima = scores[:, :groups]
    else:  # group j = columns j, j + groups, ..., j + (size - 1) * groups: a max over `size` slabs
        maxima = scores.as_strided((rows, size, groups), (scores.stride(0), groups, 1)).amax(dim=1)
    if rank == 1:
        bound = maxima.amax(dim=1)
    else:
        bound = torch.topk(maxima, rank, dim=1, sorted=False).values.amin(dim=1)
    return bound.clamp_min(lowest)


class _RowBlock:
    """Running top-``k`` of query rows ``r0:r1`` while candidate chunks stream past.

    Each block of scores is screened by the maxima of its column groups (:func:`_group_maxima`).
    Where many groups reach the row's threshold (the first chunk, or large ``k``), the members of
    the ``k + 1`` best groups of each row (which hold the block's top-``k``) are merged into the
    running top-``k`` at once; where few do, the entries at or above the threshold are kept as
    pending (row, column, value) candidates and merged once about ``k`` per row are pending. Every
    merge selects by (value descending, column ascending), so ties keep the lower column, and
    raises the threshold to just above the new ``k``-th value. Memory O(R·k).
    """

    def __init__(self, r0: int, r1: int, k: int, like: Tensor) -> None:
        self.r0, self.r1, self.k = r0, r1, k
        rows = r1 - r0
        self.values = like.new_full((rows, k), float("-inf"))
        self.indices = torch.full((rows, k), -1, dtype=torch.long, device=like.device)
        self.threshold: Tensor | None = None  # (R,): candidates are scores >= threshold
        self.initial: Tensor | None = None  # (R,): the first threshold (maybe an unverified estimate)
        self.seen = torch.zeros(rows, dtype=torch.long, device=like.device)
        self.pending: list[tuple[Tensor, Tensor, Tensor]] = []
        self.pending_count = 0
        self.capacity = max(k * rows, 4096)
        self.fresh = True  # no candidate merged yet
        self.estimated = False  # the first threshold came from estimate_threshold (count what reaches it)

    def add(self, scores: Tensor, c0: int, total: int, estimate: bool) -> None:
        """Take the candidates of the ``(R, W)`` block of columns ``c0:c0 + W``."""
        rows = scores.shape[0]
        maxima = _group_maxima(scores)
        dense = maxima is not None and maxima.shape[1] >= 2 * (self.k + 1)
        if self.threshold is None:
            if dense:
                self.threshold = scores.new_full((rows,), torch.finfo(scores.dtype).min)
            else:
                self.threshold = estimate_threshold(scores, self.k, total, estimate=estimate)
                self.estimated = True
            self.initial = self.threshold
        if maxima is not None:
            hit = maxima >= self.threshold[:, None]
            if dense and int(hit.sum()) * 2 >= rows * (self.k + 1):
                self._merge_groups(scores, maxima, c0)
                return
            found = _hits(scores, maxima, hit, self.threshold)
        else:
            at, cols = torch.nonzero(scores >= self.threshold[:, None]).unbind(1)
            found = (at, cols, scores[at, cols])
        if found[0].numel():
            self.pending.append((found[0], found[1] + c0, found[2]))
            self.pending_count += found[0].numel()
            if self.pending_count >= self.capacity:
                self.flush()

    def _merge_groups(self, scores: Tensor, maxima: Tensor, c0: int) -> None:
        """Merge the members of each row's ``k + 1`` best column groups (its top-``k`` is among them)."""
        width = scores.shape[1]
        groups, k = maxima.shape[1], self.k
        assert self.threshold is not None
        top, group = torch.topk(maxima, k + 1, dim=1, sorted=False)  # (R, k + 1)
        offsets = torch.arange(0, width, groups, device=scores.device)
        cols = (group[:, :, None] + offsets).flatten(1)  # (R, (k + 1)·GROUP)
        values = scores.gather(1, cols)
        # rows whose k-th and (k + 1)-th group maxima tie may hold equal values in a group left out: all columns
        tie = (top == top.amin(dim=1, keepdim=True)).sum(dim=1) >= 2
        drop = tie[:, None] if self.fresh else (values < self.threshold[:, None]) | tie[:, None]
        values = values.masked_fill(drop, float("-inf"))
        self._merge(values, cols + c0, None)
        if bool(tie.any()):
            at = torch.nonzero(tie).flatten()
            every = scores.index_select(0, at)
            every = every.masked_fill(every < self.threshold.index_select(0, at)[:, None], float("-inf"))
            self._merge(every, torch.arange(c0, c0 + width, device=scores.device).expand(at.shape[0], width), at)

    def _merge(self, values: Tensor, cols: Tensor, at: Tensor | None) -> None:
        """Merge candidates ``(values, cols)`` (``-inf`` = none) of all rows, or of rows ``at``, into the top-``k``."""
        assert self.threshold is not None
        assert self.initial is not None
        k = self.k
        best_values = self.values if at is None else self.values.index_select(0, at)
        best_indices = self.indices if at is None else self.indices.index_select(0, at)
        initial = self.initial if at is None else self.initial.index_select(0, at)
        threshold = self.threshold if at is None else self.threshold.index_select(0, at)
        seen = (values >= initial[:, None]).sum(dim=1) if self.estimated else None
        if self.fresh:  # nothing merged yet: the running top-k is all padding
            merged_values, merged_indices = select_topk(values, cols, k)
            if merged_values.shape[1] < k:
                merged_values = torch.cat([merged_values, best_values[:, merged_values.shape[1] :]], dim=1)
                merged_indices = torch.cat([merged_indices, best_indices[:, merged_indices.shape[1] :]], dim=1)
        else:
            merged_values, merged_indices = select_topk(
                torch.cat([best_values, values], dim=1), torch.cat([best_indices, cols], dim=1), k
            )
        kth = merged_values[:, k - 1]
        raised = torch.where(kth > float("-inf"), torch.nextafter(kth, kth.new_tensor(float("inf"))), threshold)
        if at is None:
            self.values, self.indices, self.threshold = merged_values, merged_indices, raised
            self.fresh = False
            if seen is not None:
                self.seen += seen
        else:
            self.values[at], self.indices[at], self.threshold[at] = merged_values, merged_indices, raised
            if seen is not None:
                self.seen[at] += seen

    def flush(self) -> None:
        """Merge the pending candidates into the running top-``k`` and raise the thresholds."""
        if not self.pending:
            return
        n, device = self.r1 - self.r0, self.values.device
        rows, cols, vals = (torch.cat(parts) for parts in zip(*self.pending, strict=True))
        self.pending, self.pending_count = [], 0
        order = torch.argsort(rows)
        rows, cols, vals = rows[order], cols[order], vals[order]
        counts = torch.bincount(rows, minlength=n)
        slot = torch.arange(rows.shape[0], device=device) - (counts.cumsum(0) - counts)[rows]
        width = int(counts.max())
        values = self.values.new_full((n, width), float("-inf"))
        indices = torch.full((n, width), -1, dtype=torch.long, device=device)
        values[rows, slot], indices[rows, slot] = vals, cols
        self._merge(values, indices, None)

    def unverified(self) -> Tensor:
        """Rows (local) whose estimated threshold may have hidden part of their top-``k``."""
        assert self.initial is not None
        lowest = torch.finfo(self.values.dtype).min
        if not self.estimated:
            return self.seen.new_empty(0)
        return torch.nonzero((self.seen < self.k) & (self.initial > lowest)).flatten()


def _group_maxima(scores: Tensor) -> Tensor | None:
    """``(R, W / GROUP)`` maxima of the column groups ``j, j + W/GROUP, ...`` (one vectorised pass), or ``None``."""
    rows, width = scores.shape
    groups = width // GROUP
    if groups < 8 or width % GROUP:
        return None
    return scores.view(rows, GROUP, groups).amax(dim=1)


def _hits(scores: Tensor, maxima: Tensor, hit: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row, column and value of the entries at or above ``threshold`` ``(R,)``, read only in the ``hit`` groups.

    Entries come in no particular order.
    """
    width = scores.shape[1]
    groups = maxima.shape[1]
    at, group = torch.nonzero(hit).unbind(1)
    if at.shape[0] == 0:
        return at, group, scores.new_empty(0)
    offsets = torch.arange(0, width, groups, device=scores.device)  # (GROUP,): the members of a group
    position = ((at * width + group)[:, None] + offsets).flatten()  # (H·GROUP,) into the flat block
    values = scores.view(-1).index_select(0, position)
    keep = torch.nonzero((values.view(-1, GROUP) >= threshold.index_select(0, at)[:, None]).flatten()).flatten()
    position = position.index_select(0, keep)
    row = torch.div(position, width, rounding_mode="floor")
    return row, position - row * width, values.index_select(0, keep)


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
    estimate: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-row top-``k`` of ``scale * q @ ĉ.T`` over the kept columns, in blocks of ``rows × cols``.

    The candidates stream past once, ``cols`` at a time (``ĉ``: each chunk converted to ``q``'s
    dtype and, with ``normalize``, L2-normalised row by row); every block of ``rows`` queries meets
    each chunk while it is in cache, and keeps a running top-``k`` (:class:`_RowBlock`): only the
    scores at or above its running threshold are gathered, so selection costs a compare pass, not a
    sort. The first chunk sets the threshold (:func:`estimate_threshold`); rows for which an
    estimated threshold turned out too high are recomputed exactly (a second pass for those rows
    only). Memory O(N·k + rows·cols + cols·D). Rows with fewer than ``k`` kept columns are padded
    with ``-inf`` (``+inf`` for ``largest=False``) and index ``-1``.

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
        estimate: Allow unverified threshold estimates (off for the exact recomputation).

    Returns:
        ``(values (N, k), indices (N, k))``.
    """
    n, m = q.shape[0], c.shape[0]
    if cols >= m:  # one chunk: row blocks against every column, one torch.topk each
        c = c.to(q.dtype)
        c = torch.nn.functional.normalize(c, dim=1) if normalize else c
        return _single_block_topk(q, c, filt, k, largest=largest, scale=scale, rows=rows)
    sign = scale if largest else -scale
    blocks = [_RowBlock(r0, min(r0 + rows, n), k, q) for r0 in range(0, n, rows)]
    score_buffer = q.new_empty(min(rows, n) * min(cols, m))
    for c0 in range(0, m, cols):
        chunk = c[c0 : c0 + cols].to(q.dtype)
        if normalize:
            chunk = torch.nn.functional.normalize(chunk, dim=1)
        width = chunk.shape[0]
        for block in blocks:
            size = (block.r1 - block.r0) * width
            scores = torch.mm(q[block.r0 : block.r1], chunk.T, out=score_buffer[:size].view(-1, width))
            if sign != 1.0:
                scores.mul_(sign)
            drop_block_(scores, filt, block.r0, c0)
            block.add(scores, c0, m, estimate)
    values = q.new_empty(n, k)
    indices = torch.empty(n, k, dtype=torch.long, device=q.device)
    redo = []
    for block in blocks:
        block.flush()
        values[block.r0 : block.r1], indices[block.r0 : block.r1] = block.values, block.indices
        redo.append(block.unverified() + block.r0)
    again = torch.cat(redo)
    if again.numel():
        redo_values, redo_indices = streaming_topk(
            q[again], c, filter_rows(filt, again), k, largest=True, scale=sign, rows=rows, cols=cols,
            normalize=normalize, estimate=False,
        )  # fmt: skip
        values[again], indices[again] = redo_values, redo_indices
    return finish_topk(values, indices, largest)


def _scores(
    q: Tensor, c: Tensor, filt: CandidateFilter, r0: int, r1: int, c0: int, scale: float, largest: bool
) -> Tensor:
    """``±scale * q[r0:r1] @ c.T`` with the dropped entries at ``-inf`` (negated for ``largest=False``)."""
    scores = torch.mm(q[r0:r1], c.T)
    if scale != 1.0 or not largest:
        scores.mul_(scale if largest else -scale)
    drop_block_(scores, filt, r0, c0)
    return scores


def _single_block_topk(
    q: Tensor, c: Tensor, filt: CandidateFilter, k: int, *, largest: bool, scale: float, rows: int
) -> tuple[Tensor, Tensor]:
    """Row blocks against all columns: one ``torch.topk`` per block, ties and ordering settled at the end.

    Each block writes its sorted top-``k + 1`` into shared buffers (small per-block ops are what
    costs on a busy CPU). Rows whose ``k``-th and ``(k + 1)``-th values tie get their block
    recomputed (same shapes, so the same bits) and settled by a stable sort; then every row is
    ordered by (value, lower column) in one batched sort.
    """
    n, m = q.shape[0], c.shape[0]
    width = min(k + 1, m)
    values = q.new_empty(n, width)
    positions = torch.empty(n, width, dtype=torch.long, device=q.device)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        torch.topk(_scores(q, c, filt, r0, r1, 0, scale, largest), width, dim=1, out=(values[r0:r1], positions[r0:r1]))
    if width > k:
        tie = values[:, k - 1] == values[:, k]
        if bool(tie.any()):
            tied = torch.nonzero(tie).flatten()
            for r0 in torch.unique(torch.div(tied, rows, rounding_mode="floor") * rows).tolist():
                r1 = min(r0 + rows, n)
                block_rows = tied[(tied >= r0) & (tied < r1)]
                scores = _scores(q, c, filt, r0, r1, 0, scale, largest)[block_rows - r0]
                tied_values, tied_positions = torch.sort(scores, dim=1, descending=True, stable=True)
                values[block_rows], positions[block_rows] = tied_values[:, :width], tied_positions[:, :width]
    return finish_topk(*order_topk(values, positions, k), largest)
