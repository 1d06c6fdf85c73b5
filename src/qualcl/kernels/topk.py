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
from qualcl.kernels._topk_screen import screen_pays, screened_topk
from qualcl.kernels._topk_torch import GROUP, finish_topk, stable_topk, streaming_topk

__all__ = ["topk_block_shape", "topk_checked", "topk_similarity"]

LABEL_RELATIONS = {"different": DROP_SAME, "same": DROP_DIFFERENT}
BLOCK_SCORES = 1 << 22
"""Scores per ``rows × cols`` block of the torch path (16 MiB in float32)."""
CHUNK_BYTES = 1 << 23
"""Most bytes of one normalised candidate chunk (``cols × D``): 4,096 rows at D = 512 in float32."""
SUPER_GROUP = GROUP * GROUP
"""Streaming chunks are whole 256-column super-groups (two screening levels, ``_topk_torch.screen``)."""
MIN_STREAM_COLUMNS = 4 * SUPER_GROUP
"""Streaming chunks hold at least 1,024 candidates (fewer, larger blocks: 10,000 queries × 1,024)."""
MAX_STREAM_ROWS = 16_384
"""Queries per streaming block: all of them up to this many (a block of at most 64 MiB of float32 scores)."""
MAX_COLUMN_BLOCK = 65_536
"""Up to this many candidates the default is one chunk of all of them and one selection per query block
(the K = 64 miner at M = 8,192); beyond it (retrieval databases) chunks stream past every query."""


def topk_block_shape(
    n: int,
    m: int,
    d: int,
    k: int,
    itemsize: int,
    chunk_size: int | None = None,
    column_chunk_size: int | None = None,
) -> tuple[int, int]:
    """Queries per block and candidates per chunk of the torch path of :func:`topk_similarity`.

    Up to 65,536 candidates the chunk is all of them and a row block holds about 2^22 scores. Beyond,
    all queries (up to 16,384 per block) meet each chunk while it is in cache, so each chunk is read
    and normalised once and each block pays its fixed per-op costs once: the chunk holds about
    2^22 / N candidates, in whole 256-column super-groups, at least 1,024 and at most 8 MiB
    (``cols · D · itemsize``; 4,096 candidates at D = 512 in float32).

    Args:
        n: Queries ``N``.
        m: Candidates ``M``.
        d: Embedding width ``D``.
        k: Entries selected per row.
        itemsize: Bytes per element of the compute dtype.
        chunk_size: Queries per block, or ``None`` for the default.
        column_chunk_size: Candidates per chunk, or ``None`` for the default.

    Returns:
        ``(rows, cols)``, each at least 1 and at most ``n`` / ``m``.
    """
    if column_chunk_size is not None:
        cols = column_chunk_size
    elif m <= MAX_COLUMN_BLOCK:  # one chunk, each row block selected at once
        cols = m
    else:
        widest = max(CHUNK_BYTES // max(d * itemsize, 1), SUPER_GROUP)
        cols = max(BLOCK_SCORES // max(n, 1), MIN_STREAM_COLUMNS)
        cols = SUPER_GROUP * max(1, min(cols, widest) // SUPER_GROUP)
    cols = max(1, min(cols, m))
    if chunk_size is not None:
        rows = chunk_size
    else:
        rows = max(1, BLOCK_SCORES // cols) if cols >= m else MAX_STREAM_ROWS
    return max(1, min(rows, n)), cols


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
    normalize: bool,
    norms: Tensor | None = None,
    screen: bool = False,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` of ``query @ ĉ.T`` over the kept columns: ``(values (N, k), indices (N, k))``.

    ``ĉ``: the candidates in ``query``'s dtype, L2-normalised with ``normalize`` (torch path only:
    chunk by chunk, by the row ``norms`` when given; the Triton path gets them ready). ``screen``:
    the torch path finds the candidates with a bfloat16 matmul and re-scores the survivors in float32
    (:func:`qualcl.kernels._topk_screen.screened_topk`).
    """
    filt = CandidateFilter(None, exclude_index, labels, candidate_labels, label_mode, None, mask)
    if backend == "triton":
        from qualcl.kernels import _triton_launch

        return _triton_launch.topk(query, candidates, filt, k, largest=largest, scale=1.0)
    if screen:
        return screened_topk(
            query, candidates, filt, k, largest=largest, rows=rows, cols=cols, normalize=normalize, norms=norms
        )
    return streaming_topk(
        query, candidates, filt, k, largest=largest, scale=1.0, rows=rows, cols=cols, normalize=normalize, norms=norms
    )


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
    normalize: bool,
    norms: Tensor | None = None,
    screen: bool = False,
) -> tuple[Tensor, Tensor]:
    dtype = query.dtype if backend == "torch" else torch.float32
    n = query.shape[0]
    return query.new_empty(n, k, dtype=dtype), query.new_empty(n, k, dtype=torch.long)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    ctx.mark_non_differentiable(*output)


def _backward(ctx: Any, *grads: Tensor) -> tuple[None, ...]:
    return (None,) * 14


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
    screen: bool | None = None,
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
    rows that overflow it; performance.md §6.3), ``"torch"`` (see below), ``"naive"`` (dense, for
    tests), ``"auto"`` (Triton on CUDA when available, else torch).

    The torch path reads the candidates once, in chunks of ``column_chunk_size`` rows (converted and,
    with ``normalize``, L2-normalised chunk by chunk: a memory-mapped bank is never copied whole),
    and every block of ``chunk_size`` queries meets a chunk while it is in cache. Up to
    ``M = 65,536`` candidates (e.g. the K = 64 miner at 8,192) the default is one chunk of all
    candidates and one selection per query block, read through the maxima of its 16-column groups
    (only the members of the best groups, those that reach a bound on the ``k``-th group maximum, are
    ranked): on the CPU in float32 by a compiled C kernel, built on first use with the system C
    compiler and cached (:mod:`qualcl.kernels._native`; ``QUALCL_NATIVE=0`` turns it off), while
    the block is still in cache; elsewhere, or without a compiler, by ``torch.topk`` over the
    maxima, then over the members (the same result). Beyond (retrieval: k = 10 of 100,000) all
    queries meet each chunk in as few blocks as fit (:func:`topk_block_shape`) and keep a running
    top-``k``: the first chunk's group maxima give each row a lower bound on its ``k``-th value, and
    every block is screened by the maxima of its 16-column groups and 256-column super-groups
    against the row's running threshold, so that only the few entries that reach it are gathered
    and merged. Memory O(N·k + chunk_size · column_chunk_size + column_chunk_size · D).

    Exactness: indices and ties are exact for any chunk sizes (the lowest columns win, as a stable
    sort would). The values are those of ``F.normalize(q) @ F.normalize(c).T`` *as this call computes
    them*, block by block. They equal ``torch.topk(q̂ @ ĉ.T, k)`` of one full matmul bit for bit when
    the call uses one block (``N <= chunk_size`` and ``M <= column_chunk_size``; with the defaults:
    ``M <= 65,536`` and ``N · M <= 2^22``); other block shapes are other matmul
    shapes, for which BLAS may round a dot product differently in the last bit (float32: one ulp,
    about 6e-8 relative, seen at chunk sizes of a few rows; issue 28): values then agree within
    that, and indices can differ from ``torch.topk``'s only between candidates that close. A given
    block shape is deterministic, run to run.

    The bfloat16 screen (``screen``; by default on CPUs with native bfloat16 — AVX512-BF16 or AMX —
    for calls computed in float32, from float16/bfloat16/float32 inputs, with ``N · M · D >= 2^27``
    and ``M >= 1024 k``, such as retrieval: k = 10 of 100,000): the blocks are multiplied in bfloat16
    (about 2.8 times float32's speed on an AMD EPYC Zen 4), every estimate is within a proven bound of
    the exact score, and only the entries that the bound cannot rule out of a row's top-``k`` are
    scored again in float32 (each as its own sum of products) and ranked. The selection is still
    exact, ties included (lower columns first), for the re-scored values; these are float32 dot
    products like the matmul's, but summed in another order, so they can differ from
    ``torch.topk(q̂ @ ĉ.T, k)``'s values in the last bit (indices then only between candidates that
    close). Docs: ``docs/performance.md`` (exact search).

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
        chunk_size: Queries per block of the torch path (default: :func:`topk_block_shape`).
        column_chunk_size: Candidates per chunk of the torch path (default: :func:`topk_block_shape`).
        impl: ``"auto"``, ``"triton"``, ``"torch"`` or ``"naive"``.
        screen: Screen with a bfloat16 matmul on the torch path (see above): ``None`` (default) where
            it pays (float32 compute on a CPU with native bfloat16, ``N · M · D >= 2^27``, ``M >= 1024 k``),
            ``True`` always (float16/bfloat16/float32 inputs), ``False`` never.

    Returns:
        ``(values, indices)``: ``(N, k)`` similarities (float32 for half inputs, float64 for float64)
        and ``(N, k)`` int64 column indices.

    Raises:
        ValueError: On mismatched shapes, non-finite inputs, ``k`` outside ``[1, M]``, indices outside
            ``[-1, M)``, a bad ``label_relation`` or ``impl``, ``screen=True`` on float64 inputs.
        TypeError: On a wrong dtype, or a ``screen`` that is not a bool or ``None``.

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
    if screen is not None and not isinstance(screen, bool):
        raise TypeError(f"screen must be True, False or None, got {screen!r}")
    for name, value in (("chunk_size", chunk_size), ("column_chunk_size", column_chunk_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    device = query.device
    row_labels = None if labels is None else check_labels("labels", labels, n, device)
    column_labels = None if candidate_labels is None else check_labels("candidate_labels", candidate_labels, m, device)
    exclude = None if exclude_index is None else check_index("exclude_index", exclude_index, n, m, device)
    label_mode = KEEP_ALL_LABELS if row_labels is None else LABEL_RELATIONS[label_relation]

    return topk_checked(
        query,
        candidates,
        k,
        mask,
        labels=row_labels,
        candidate_labels=column_labels,
        label_mode=label_mode,
        exclude_index=exclude,
        largest=largest,
        normalize=normalize,
        chunk_size=chunk_size,
        column_chunk_size=column_chunk_size,
        impl=impl,
        screen=screen,
    )


def topk_checked(
    query: Tensor,
    candidates: Tensor,
    k: int,
    mask: Tensor | None = None,
    *,
    labels: Tensor | None = None,
    candidate_labels: Tensor | None = None,
    label_mode: int = KEEP_ALL_LABELS,
    exclude_index: Tensor | None = None,
    largest: bool = True,
    normalize: bool = True,
    chunk_size: int | None = None,
    column_chunk_size: int | None = None,
    impl: str = "auto",
    candidate_norms: Tensor | None = None,
    screen: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`topk_similarity` on arguments that are already checked (no pass over the inputs).

    For callers that validated the candidates once and search them many times
    (:class:`qualcl.evaluation.RetrievalIndex`); the arguments are those of
    :func:`topk_similarity`, with ``labels`` / ``candidate_labels`` / ``exclude_index`` as int64
    tensors on the queries' device and ``label_mode`` in place of ``label_relation``.
    ``candidate_norms`` (``(M,)``, ``torch.linalg.vector_norm`` of the candidates' rows) spares the
    torch path a norm pass over every chunk when normalising; they are used when computed in the
    dtype the search computes in (float64 if either input is, else float32), ignored otherwise.
    ``screen`` is :func:`topk_similarity`'s.
    """
    n, d = query.shape
    m = candidates.shape[0]
    backend = resolve_impl(impl, query, candidates)
    compute = torch.float64 if torch.float64 in (query.dtype, candidates.dtype) else torch.float32
    if backend == "triton" and compute == torch.float64:
        if impl == "triton":
            raise ValueError("impl='triton' supports float16/bfloat16/float32 inputs")
        backend = "torch"
    with torch.no_grad():
        q = query.detach().to(compute)
        q = F.normalize(q, dim=1) if normalize else q
        norms = None
        if backend == "torch":  # the candidates are converted and normalised chunk by chunk, inside
            c, in_op = candidates.detach(), normalize
            if normalize and candidate_norms is not None and candidate_norms.dtype == compute:
                norms = candidate_norms.to(q.device)  # norms of another precision would change the values
        else:
            c, in_op = candidates.detach().to(compute), False
            c = F.normalize(c, dim=1) if normalize else c
        if backend == "triton" and query.dtype == candidates.dtype and query.dtype != compute:
            q, c = q.to(query.dtype), c.to(candidates.dtype)
        if backend == "naive":
            filt = CandidateFilter(None, exclude_index, labels, candidate_labels, label_mode, None, mask)
            return _naive_topk(q, c, filt, k, largest)
        if screen is None:
            screen = backend == "torch" and screen_pays(q, n, m, d, k)
        elif screen and compute != torch.float32:
            raise ValueError("screen=True needs float16/bfloat16/float32 inputs (a bfloat16 screen of float64 is moot)")
        rows, cols = topk_block_shape(n, m, d, k, q.element_size(), chunk_size, column_chunk_size)
        op = torch.ops.qualcl.topk_similarity if through_custom_op() else _topk_impl  # eager: no op wrapper
        arguments = (mask, labels, candidate_labels, label_mode, exclude_index, largest, backend, rows, cols)
        values, indices = op(q, c, k, *arguments, in_op, norms, screen and backend == "torch")
    return values, indices
