"""Exact per-row top-K of query × candidate similarities without the ``(N, M)`` matrix."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import check_embeddings, check_index, check_labels, check_mask, check_top_k
from qualcl.kernels._columns import (
    DROP_DIFFERENT,
    DROP_SAME,
    KEEP_ALL_LABELS,
    CandidateFilter,
)
from qualcl.kernels._dispatch import resolve_impl, through_custom_op
from qualcl.kernels._info_nce_torch import block_shape
from qualcl.kernels._topk_torch import finish_topk, stable_topk, streaming_topk

__all__ = ["topk_similarity"]

LABEL_RELATIONS = {"different": DROP_SAME, "same": DROP_DIFFERENT}


def _topk_impl(
    query: Tensor,
    candidates: Tensor,
    k: int,
    mask: Tensor | None,
    labels: Tensor | None,
    candidate_labels: Tensor | None,
    label_mode: int,
    exclude_index: Tensor | None,
    largest: bool,
    backend: str,
    rows: int,
    cols: int,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` of ``query @ candidates.T`` over the kept columns: ``(values (N, k), indices (N, k))``."""
    filt = CandidateFilter(None, exclude_index, labels, candidate_labels, label_mode, None, mask)
    if backend == "triton":
        from qualcl.kernels import _triton_launch

        return _triton_launch.topk(query, candidates, filt, k, largest=largest, scale=1.0)
    return streaming_topk(query, candidates, filt, k, largest=largest, scale=1.0, rows=rows, cols=cols)


_topk_op = torch.library.custom_op("qualcl::topk_similarity", mutates_args=())(_topk_impl)


@_topk_op.register_fake
def _topk_fake(
    query: Tensor,
    candidates: Tensor,
    k: int,
    mask: Tensor | None,
    labels: Tensor | None,
    candidate_labels: Tensor | None,
    label_mode: int,
    exclude_index: Tensor | None,
    largest: bool,
    backend: str,
    rows: int,
    cols: int,
) -> tuple[Tensor, Tensor]:
    dtype = query.dtype if backend == "torch" else torch.float32
    n = query.shape[0]
    return query.new_empty(n, k, dtype=dtype), query.new_empty(n, k, dtype=torch.long)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    ctx.mark_non_differentiable(*output)


def _backward(ctx: Any, *grads: Tensor) -> tuple[None, ...]:
    return (None,) * 12


_topk_op.register_autograd(_backward, setup_context=_setup_context)


def _naive_topk(q: Tensor, c: Tensor, filt: CandidateFilter, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Dense reference: the full similarity matrix, a stable sort, padding marked ``-1``."""
    scores = q @ c.T
    scores = scores if largest else -scores
    cols = torch.arange(c.shape[0], device=q.device)
    drop = torch.zeros_like(scores, dtype=torch.bool)
    if filt.exclude_index is not None:
        drop |= cols[None, :] == filt.exclude_index[:, None]
    if filt.labels is not None and filt.candidate_labels is not None and filt.label_mode != KEEP_ALL_LABELS:
        same = filt.labels[:, None] == filt.candidate_labels[None, :]
        drop |= same if filt.label_mode == DROP_SAME else ~same
    if filt.keep_mask is not None:
        drop |= ~filt.keep_mask
    values, indices = stable_topk(scores.masked_fill(drop, float("-inf")), k)
    return finish_topk(values, indices, largest)


def topk_similarity(
    query: Tensor,
    candidates: Tensor,
    k: int,
    mask: Tensor | None = None,
    *,
    labels: Tensor | None = None,
    candidate_labels: Tensor | None = None,
    label_relation: str = "different",
    exclude_index: Tensor | None = None,
    largest: bool = True,
    normalize: bool = True,
    chunk_size: int | None = None,
    column_chunk_size: int | None = None,
    impl: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Exact per-row top-``k`` cosine (or dot) similarities and their candidate indices.

    For every query row, the ``k`` most similar (``largest=False``: least similar) candidates among
    the kept columns, sorted from the most to the least selected. Ties are deterministic: equal
    values come in ascending column order, and the lowest columns win at the ``k``-th place. A row
    with fewer than ``k`` kept candidates is padded with value ``-inf`` (``+inf`` for
    ``largest=False``) and index ``-1``. Selection carries no gradient: gather the embeddings by
    ``indices`` to build a differentiable loss.

    Kept columns: ``mask[i, j]`` (dense fallback; all by default), restricted by labels
    (``label_relation="different"`` keeps candidates whose label differs from the row's — hard
    negatives; ``"same"`` keeps same-label ones — positives), minus column ``exclude_index[i]``.

    Implementations: ``"triton"`` (CUDA; fused with the matmul by threshold filtering against a
    running lower bound of the ``k``-th value, a per-row candidate buffer and an exact fallback for
    rows that overflow it; performance.md §6.3), ``"torch"`` (blocks of ``chunk_size`` rows ×
    ``column_chunk_size`` columns with a running merge; memory O(N·k + chunk·M)), ``"naive"``
    (dense, for tests), ``"auto"`` (Triton on CUDA when available, else torch).

    Exactness: the values are ``torch.topk`` of the similarities *as this call computes them*.
    They equal ``torch.topk(q @ c.T, k)`` bit for bit when the torch path computes ``q @ c.T`` as
    one block: ``N·M <= 2^22`` and ``M <= 65,536`` with the default ``chunk_size`` /
    ``column_chunk_size``, or sizes ``>= N`` and ``>= M``. Smaller blocks are other matmul shapes,
    for which BLAS may round a dot product differently in the last bit (float32: one ulp, about
    6e-8 relative): values then agree within that, and indices can differ only between candidates
    that close. A given block shape is deterministic, run to run.

    Args:
        query: ``(N, D)`` queries.
        candidates: ``(M, D)`` candidates.
        k: Number of candidates per row, ``1 <= k <= M``.
        mask: ``(N, M)`` bool, True = candidate kept.
        labels: ``(N,)`` integer labels of the rows (with ``candidate_labels``).
        candidate_labels: ``(M,)`` integer labels of the candidates.
        label_relation: ``"different"`` or ``"same"``.
        exclude_index: ``(N,)`` integer column dropped from each row (e.g. ``arange(N)`` when the
            candidates are the queries), ``-1`` for none.
        largest: Most similar (True) or least similar (False) first.
        normalize: Cosine similarity (L2-normalise inside) or raw dot products.
        chunk_size: Rows per block of the torch path (default: ``2^22`` similarities per block).
        column_chunk_size: Columns per block of the torch path (default ``min(M, 65536)``).
        impl: ``"auto"``, ``"triton"``, ``"torch"`` or ``"naive"``.

    Returns:
        ``(values, indices)``: ``(N, k)`` similarities (float32 for half inputs, float64 for float64)
        and ``(N, k)`` int64 column indices.

    Raises:
        ValueError: On mismatched shapes, non-finite inputs, ``k`` outside ``[1, M]``, indices outside
            ``[-1, M)``, a bad ``label_relation`` or ``impl``.
        TypeError: On a wrong dtype.

    Examples:
        >>> import torch
        >>> from qualcl.kernels import topk_similarity
        >>> q, bank = torch.randn(8, 16), torch.randn(100, 16)
        >>> values, indices = topk_similarity(q, bank, 5)
        >>> values.shape, indices.shape
        (torch.Size([8, 5]), torch.Size([8, 5]))

    Reference:
        Johnson et al., "Billion-scale similarity search with GPUs" (FAISS WarpSelect), 2017;
        CoMCL (Hou et al., MICCAI 2024) hard-negative mining.
    """
    check_embeddings("query", query, nonzero=normalize)
    n, d = query.shape
    check_embeddings("candidates", candidates, dim=d, nonzero=normalize)
    m = candidates.shape[0]
    check_top_k(k, m, name="k", optional=False)
    if mask is not None:
        check_mask("mask", mask, (n, m))
    if (labels is None) != (candidate_labels is None):
        raise ValueError("labels and candidate_labels must be given together (row labels and column labels)")
    if label_relation not in LABEL_RELATIONS:
        raise ValueError(f"label_relation must be one of {tuple(LABEL_RELATIONS)}, got {label_relation!r}")
    for name, value in (("chunk_size", chunk_size), ("column_chunk_size", column_chunk_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    device = query.device
    row_labels = None if labels is None else check_labels("labels", labels, n, device)
    column_labels = None if candidate_labels is None else check_labels("candidate_labels", candidate_labels, m, device)
    exclude = None if exclude_index is None else check_index("exclude_index", exclude_index, n, m, device)
    label_mode = KEEP_ALL_LABELS if row_labels is None else LABEL_RELATIONS[label_relation]

    backend = resolve_impl(impl, query, candidates)
    compute = torch.float64 if torch.float64 in (query.dtype, candidates.dtype) else torch.float32
    if backend == "triton" and compute == torch.float64:
        if impl == "triton":
            raise ValueError("impl='triton' supports float16/bfloat16/float32 inputs")
        backend = "torch"
    with torch.no_grad():
        q, c = (x.detach().to(compute) for x in (query, candidates))
        if normalize:
            q, c = F.normalize(q, dim=1), F.normalize(c, dim=1)
        if backend == "triton" and query.dtype == candidates.dtype and query.dtype != compute:
            q, c = q.to(query.dtype), c.to(candidates.dtype)
        if backend == "naive":
            filt = CandidateFilter(None, exclude, row_labels, column_labels, label_mode, None, mask)
            return _naive_topk(q, c, filt, k, largest)
        rows, cols = block_shape(n, m, chunk_size, column_chunk_size)
        op = torch.ops.qualcl.topk_similarity if through_custom_op() else _topk_impl  # eager: no op wrapper
        values, indices = op(
            q, c, k, mask, row_labels, column_labels, label_mode, exclude, largest, backend, rows, cols
        )
    return values, indices
