"""Exact, tie-deterministic top-K selection in torch, and the streaming top-K over similarity blocks."""

from __future__ import annotations

import torch
from torch import Tensor

from qualcl.kernels._columns import CandidateFilter, drop_block_

__all__ = ["finish_topk", "merge_topk", "order_topk", "stable_topk", "streaming_topk", "topk_candidates"]


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


def finish_topk(values: Tensor, indices: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
    """Mark padding (``-inf`` after the sign flip) with index ``-1`` and undo the sign flip."""
    indices = indices.masked_fill(values == float("-inf"), -1)
    return (values if largest else -values), indices


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
) -> tuple[Tensor, Tensor]:
    """Per-row top-``k`` of ``scale * q @ c.T`` over the kept columns, by blocks of ``rows × cols``.

    Memory O(N·k + rows·cols); ``k <= M``. Rows with fewer than ``k`` kept columns are padded with
    ``-inf`` (``+inf`` for ``largest=False``) and index ``-1``.
    """
    n, m = q.shape[0], c.shape[0]
    if cols >= m:
        return _single_block_topk(q, c, filt, k, largest=largest, scale=scale, rows=rows)
    values = q.new_empty(n, k)
    indices = torch.empty(n, k, dtype=torch.long, device=q.device)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        best: tuple[Tensor, Tensor] | None = None
        for c0 in range(0, m, cols):
            block_values, block_positions = stable_topk(
                _scores(q, c[c0 : c0 + cols], filt, r0, r1, c0, scale, largest), k
            )
            found = (block_values, block_positions + c0)
            best = found if best is None else merge_topk(best, found, k)
        assert best is not None
        assert best[0].shape[1] == k, "k must not exceed the number of candidates"
        values[r0:r1], indices[r0:r1] = finish_topk(*best, largest)
    return values, indices


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
