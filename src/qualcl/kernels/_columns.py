"""Compact descriptions of which candidate columns a row uses, and their evaluation on one block.

A dense ``(N, M)`` bool mask costs as much memory as the similarity matrix the kernels avoid, so the
kernels describe columns with per-row and per-column vectors (``(N,)`` indices, ``(N,)`` / ``(M,)``
labels) and accept dense masks only as a fallback. The Triton kernels evaluate the same rules tile
by tile; :func:`drop_block_` and :func:`positive_block` are the torch versions for one block.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "DROP_DIFFERENT",
    "DROP_SAME",
    "KEEP_ALL_LABELS",
    "CandidateFilter",
    "ColumnSpec",
    "count_columns",
    "drop_block_",
    "fill_index_",
    "local_index",
    "positive_block",
]

KEEP_ALL_LABELS, DROP_SAME, DROP_DIFFERENT = 0, 1, 2


class ColumnSpec(NamedTuple):
    """Positives and negatives of each row of an InfoNCE over ``(N, M)`` query × candidate pairs.

    Column ``j`` is a positive of row ``i`` when ``j == positive_index[i]``, or
    ``labels[i] == candidate_labels[j]``, or ``positive_mask[i, j]``, unless
    ``j == exclude_index[i]``. Every other column that is not excluded and that ``negative_mask``
    keeps (all, when it is ``None``) is a negative. Index entries ``-1`` mean "none".

    Attributes:
        positive_index: ``(N,)`` int64 or ``None``.
        labels: ``(N,)`` int64 or ``None`` (set together with ``candidate_labels``).
        candidate_labels: ``(M,)`` int64 or ``None``.
        positive_mask: ``(N, M)`` bool or ``None``.
        exclude_index: ``(N,)`` int64 or ``None``.
        negative_mask: ``(N, M)`` bool, True = negative kept, or ``None``.
    """

    positive_index: Tensor | None
    labels: Tensor | None
    candidate_labels: Tensor | None
    positive_mask: Tensor | None
    exclude_index: Tensor | None
    negative_mask: Tensor | None

    def negatives(self) -> CandidateFilter:
        """The filter that leaves exactly the negatives of each row (used to rank them for ``top_k``)."""
        return CandidateFilter(
            drop_index=self.positive_index,
            exclude_index=self.exclude_index,
            labels=self.labels,
            candidate_labels=self.candidate_labels,
            label_mode=KEEP_ALL_LABELS if self.labels is None else DROP_SAME,
            drop_mask=self.positive_mask,
            keep_mask=self.negative_mask,
        )


class CandidateFilter(NamedTuple):
    """Which columns a row may select (top-K): everything not dropped by one of the rules.

    Attributes:
        drop_index: ``(N,)`` int64, column dropped from row ``i`` (``-1`` none), or ``None``.
        exclude_index: ``(N,)`` int64, a second such column (e.g. the row itself), or ``None``.
        labels: ``(N,)`` int64 or ``None``.
        candidate_labels: ``(M,)`` int64 or ``None``.
        label_mode: ``KEEP_ALL_LABELS``, ``DROP_SAME`` (keep other labels) or ``DROP_DIFFERENT``.
        drop_mask: ``(N, M)`` bool, True = dropped, or ``None``.
        keep_mask: ``(N, M)`` bool, False = dropped, or ``None``.
    """

    drop_index: Tensor | None
    exclude_index: Tensor | None
    labels: Tensor | None
    candidate_labels: Tensor | None
    label_mode: int
    drop_mask: Tensor | None
    keep_mask: Tensor | None


def local_index(index: Tensor | None, r0: int, r1: int, c0: int, c1: int) -> Tensor | None:
    """Rows ``r0:r1`` of a column-index vector, shifted into block ``c0:c1`` (``-1`` outside it)."""
    if index is None:
        return None
    local = index[r0:r1] - c0
    return local.where((local >= 0) & (local < c1 - c0), local.new_full((), -1))


def fill_index_(block: Tensor, local: Tensor | None, value: float | bool) -> None:
    """Set ``block[i, local[i]] = value`` for the rows with ``local[i] >= 0``."""
    if local is None:
        return
    idx = local.clamp(min=0)[:, None]
    current = block.gather(1, idx)
    block.scatter_(1, idx, torch.where((local >= 0)[:, None], torch.full_like(current, value), current))


def drop_block_(scores: Tensor, filt: CandidateFilter, r0: int, c0: int) -> None:
    """Set the dropped entries of the ``(R, C)`` block at rows ``r0:``, columns ``c0:`` to ``-inf``."""
    r1, c1 = r0 + scores.shape[0], c0 + scores.shape[1]
    drop: Tensor | None = None
    if filt.label_mode != KEEP_ALL_LABELS and filt.labels is not None and filt.candidate_labels is not None:
        same = filt.labels[r0:r1, None] == filt.candidate_labels[None, c0:c1]
        drop = same if filt.label_mode == DROP_SAME else ~same
    if filt.drop_mask is not None:
        block = filt.drop_mask[r0:r1, c0:c1]
        drop = block if drop is None else drop | block
    if filt.keep_mask is not None:
        block = ~filt.keep_mask[r0:r1, c0:c1]
        drop = block if drop is None else drop | block
    if drop is not None:
        scores.masked_fill_(drop, float("-inf"))
    fill_index_(scores, local_index(filt.drop_index, r0, r1, c0, c1), float("-inf"))
    fill_index_(scores, local_index(filt.exclude_index, r0, r1, c0, c1), float("-inf"))


def positive_block(spec: ColumnSpec, r0: int, r1: int, c0: int, c1: int) -> tuple[Tensor | None, Tensor | None]:
    """Positives of the block: ``(local column (R,), None)`` for index-only specs, else ``(None, (R, C) bool)``.

    The excluded column is never a positive. Exactly one of the two results is set when the block
    can hold positives; both are ``None`` when the spec has no positive columns at all.
    """
    dense: Tensor | None = None
    if spec.labels is not None and spec.candidate_labels is not None:
        dense = spec.labels[r0:r1, None] == spec.candidate_labels[None, c0:c1]
    if spec.positive_mask is not None:
        block = spec.positive_mask[r0:r1, c0:c1]
        dense = block.clone() if dense is None else dense | block
    index = local_index(spec.positive_index, r0, r1, c0, c1)
    exclude = local_index(spec.exclude_index, r0, r1, c0, c1)
    if dense is None:
        if index is not None and exclude is not None:
            index = index.where(index != exclude, index.new_full((), -1))
        return index, None
    fill_index_(dense, index, True)
    fill_index_(dense, exclude, False)
    return None, dense


def _dense_counts(spec: ColumnSpec, n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Positive and negative column counts from the dense masks, in row blocks of about 2^22 entries."""
    npos = torch.zeros(n, dtype=torch.int64, device=device)
    nneg = torch.zeros(n, dtype=torch.int64, device=device)
    step = max(1, (1 << 22) // max(m, 1))
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        index, dense = positive_block(spec, r0, r1, 0, m)
        if dense is None:
            dense = torch.zeros(r1 - r0, m, dtype=torch.bool, device=device)
            fill_index_(dense, index, True)
        excluded = torch.zeros_like(dense)
        fill_index_(excluded, local_index(spec.exclude_index, r0, r1, 0, m), True)
        negative = ~dense & ~excluded
        if spec.negative_mask is not None:
            negative &= spec.negative_mask[r0:r1]
        npos[r0:r1], nneg[r0:r1] = dense.sum(dim=1), negative.sum(dim=1)
    return npos, nneg


def count_columns(spec: ColumnSpec, n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Number of positive and of negative columns of each row (``(N,)`` int64 each).

    Index and label specs are counted in O((N + M) log M) (sorted labels), without any ``(N, M)``
    block; the dense masks are evaluated in row blocks. ``top_k`` does not enter: it keeps at least
    one negative of every row that has one.
    """
    if spec.positive_mask is not None or spec.negative_mask is not None:
        return _dense_counts(spec, n, m, device)
    npos = torch.zeros(n, dtype=torch.int64, device=device)
    labels, columns = spec.labels, spec.candidate_labels
    with_labels = labels is not None and columns is not None
    if with_labels:
        assert labels is not None
        assert columns is not None
        ordered = columns.sort().values
        npos += torch.searchsorted(ordered, labels, right=True) - torch.searchsorted(ordered, labels)

    def is_label_positive(index: Tensor) -> Tensor:
        if not with_labels:
            return torch.zeros_like(index, dtype=torch.bool)
        assert labels is not None
        assert columns is not None
        return (index >= 0) & (columns[index.clamp(min=0)] == labels)

    if spec.positive_index is not None:
        index = spec.positive_index
        npos += ((index >= 0) & ~is_label_positive(index)).long()
    excluded = torch.zeros(n, dtype=torch.bool, device=device)
    if spec.exclude_index is not None:
        exclude = spec.exclude_index
        excluded = exclude >= 0
        hit = is_label_positive(exclude)
        if spec.positive_index is not None:
            hit |= excluded & (exclude == spec.positive_index)
        npos -= hit.long()
    return npos, m - npos - excluded.long()
