"""Fused InfoNCE / multi-positive InfoNCE over ``(N, D)`` queries × ``(M, D)`` candidates, never N×M in memory."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import (
    check_embeddings,
    check_index,
    check_labels,
    check_mask,
    check_reduction,
    check_scalar,
    check_top_k,
    check_weights,
)
from qualcl.kernels._columns import ColumnSpec, count_columns
from qualcl.kernels._dispatch import resolve_impl, through_custom_op
from qualcl.kernels._info_nce_torch import block_shape, naive_info_nce, streaming_backward, streaming_forward
from qualcl.kernels._rows import (
    row_coefficients,
    row_losses,
    row_totals,
    unit_rows,
    upstream_row_grad,
    weight_grad,
)

__all__ = ["fused_info_nce"]

_Outputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
TRITON_MAX_DIM = 1024
"""Widest feature dimension the Triton kernels take (``impl="auto"`` uses the torch path beyond it)."""


def _info_nce_impl(
    query: Tensor,
    candidates: Tensor,
    positive_logit: Tensor | None,
    weights: Tensor | None,
    positive_index: Tensor | None,
    labels: Tensor | None,
    candidate_labels: Tensor | None,
    positive_mask: Tensor | None,
    exclude_index: Tensor | None,
    negative_mask: Tensor | None,
    scale: float,
    top_k: int | None,
    reduction: str,
    backend: str,
    rows: int,
    cols: int,
    grad_query: bool,
    grad_candidates: bool,
) -> _Outputs:
    """InfoNCE over L2-normalised (or raw) ``query`` × ``candidates`` with logits ``scale * q·c``.

    Returns ``(loss, losses, lse, npos, threshold, grad_query, grad_candidates, grad_positive_logit)``;
    only ``loss`` is differentiable, the rest feeds backward (the three gradients are the ones computed
    during the forward pass for a unit upstream gradient, or empty).
    """
    spec = ColumnSpec(positive_index, labels, candidate_labels, positive_mask, exclude_index, negative_mask)
    if backend == "torch":
        out = streaming_forward(
            query,
            candidates,
            spec,
            scale=scale,
            top_k=top_k,
            positive_logit=positive_logit,
            weights=weights,
            reduction=reduction,
            rows=rows,
            cols=cols,
            grad_query=grad_query,
            grad_candidates=grad_candidates,
        )
        loss = out.loss.clone() if out.loss is out.losses else out.loss
        return (loss, *out[1:])  # type: ignore[return-value]
    from qualcl.kernels import _triton_launch

    lse, possum, npos, threshold = _triton_launch.info_nce_forward(query, candidates, spec, scale, top_k)
    p = None if positive_logit is None else positive_logit.float()
    losses, _, _ = row_losses(lse, possum, npos, p)
    from qualcl.functional.reduction import weighted_reduce

    loss = weighted_reduce(losses, weights, reduction)
    return (
        loss.clone() if loss is losses else loss,
        losses,
        lse,
        npos,
        lse.new_empty(0) if threshold is None else threshold,
        lse.new_empty(0),
        lse.new_empty(0),
        lse.new_empty(0),
    )


_info_nce_op = torch.library.custom_op("qualcl::info_nce", mutates_args=())(_info_nce_impl)


@_info_nce_op.register_fake
def _info_nce_fake(
    query: Tensor,
    candidates: Tensor,
    positive_logit: Tensor | None,
    weights: Tensor | None,
    positive_index: Tensor | None,
    labels: Tensor | None,
    candidate_labels: Tensor | None,
    positive_mask: Tensor | None,
    exclude_index: Tensor | None,
    negative_mask: Tensor | None,
    scale: float,
    top_k: int | None,
    reduction: str,
    backend: str,
    rows: int,
    cols: int,
    grad_query: bool,
    grad_candidates: bool,
) -> _Outputs:
    n = query.shape[0]
    dtype = query.dtype if backend == "torch" else torch.float32
    row = query.new_empty(n, dtype=dtype)
    cache = backend == "torch" and reduction != "none" and cols >= candidates.shape[0]
    cache = cache and (grad_query or grad_candidates or positive_logit is not None)
    empty = query.new_empty(0, dtype=dtype)
    return (
        query.new_empty((n,) if reduction == "none" else (), dtype=dtype),
        row,
        torch.empty_like(row),
        torch.empty_like(row),
        torch.empty_like(row) if top_k is not None else empty,
        torch.empty_like(query) if cache and grad_query else torch.empty_like(empty),
        torch.empty_like(candidates) if cache and grad_candidates else torch.empty_like(empty),
        torch.empty_like(row) if cache and positive_logit is not None else torch.empty_like(empty),
    )


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: _Outputs) -> None:
    (query, candidates, positive_logit, weights, *index_and_masks) = inputs[:10]
    scale, top_k, reduction, backend, rows, cols = inputs[10:16]
    loss, losses, lse, npos, threshold, dq, dc, dpos = output
    ctx.mark_non_differentiable(losses, lse, npos, threshold, dq, dc, dpos)
    ctx.save_for_backward(
        query, candidates, positive_logit, weights, *index_and_masks, loss, losses, lse, npos, threshold, dq, dc, dpos
    )
    ctx.options = (scale, top_k, reduction, backend, rows, cols)


def _backward(ctx: Any, grad: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
    saved = ctx.saved_tensors
    query, candidates, positive_logit, weights = saved[:4]
    spec = ColumnSpec(*saved[4:10])
    loss, losses, lse, npos, threshold, dq_cache, dc_cache, dpos_cache = saved[10:]
    scale, top_k, reduction, backend, rows, cols = ctx.options
    need_q, need_c, need_p, need_w = ctx.needs_input_grad[:4]
    cached = (
        (dq_cache.numel() > 0 or not need_q)
        and (dc_cache.numel() > 0 or not need_c)
        and (positive_logit is None or dpos_cache.numel() > 0 or not need_p)
        and (dq_cache.numel() + dc_cache.numel() + dpos_cache.numel() > 0)
    )
    dq = dc = dpos = dw = None
    if cached:
        dq = dq_cache * grad if need_q else None
        dc = dc_cache * grad if need_c else None
        dpos = dpos_cache * grad if need_p and positive_logit is not None else None
    else:
        p = None if positive_logit is None else positive_logit.to(lse.dtype)
        row_grad = upstream_row_grad(grad, weights, reduction, losses)
        total, count = row_totals(lse, npos, p)
        coef = row_coefficients(row_grad, lse, total, count, p)
        dpos = coef.positive_logit
        if need_q or need_c:
            kept = threshold if top_k is not None else None
            if backend == "torch":
                dq, dc = streaming_backward(
                    query,
                    candidates,
                    spec,
                    scale=scale,
                    top_k=top_k,
                    threshold=kept,
                    lse=lse,
                    coef_lse=coef.lse,
                    coef_pos=coef.positive,
                    rows=rows,
                    cols=cols,
                    grad_query=need_q,
                    grad_candidates=need_c,
                )
            else:
                from qualcl.kernels import _triton_launch

                dq, dc = _triton_launch.info_nce_backward(
                    query, candidates, spec, scale, kept, lse, coef.lse, coef.positive, need_q, need_c
                )
    if need_w and weights is not None:
        dw = weight_grad(grad, weights, reduction, losses, loss)
    if dq is not None:
        dq = dq.to(query.dtype)
    if dc is not None:
        dc = dc.to(candidates.dtype)
    if dpos is not None and positive_logit is not None:
        dpos = dpos.to(positive_logit.dtype)
    return (dq, dc, dpos, dw) + (None,) * 14


_info_nce_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerInfoNCE(torch.autograd.Function):
    """``qualcl::info_nce`` for eager calls: the same forward, context and backward, without the op wrapper."""

    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> _Outputs:  # type: ignore[override]
        output = _info_nce_impl(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return _backward(ctx, *grads)


def _check_temperature(temperature: float | Tensor) -> float | Tensor:
    """A positive temperature; a tensor stays one only when a gradient should reach it."""
    tau = check_scalar("temperature", temperature, positive=True)
    return float(tau) if isinstance(tau, Tensor) and not tau.requires_grad else tau


def _check_chunk(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _contrasted_weights(
    spec: ColumnSpec, n: int, m: int, separate_positive: bool, weights: Tensor | None, like: Tensor
) -> Tensor:
    """``w_i c_i``: the row weights with 0 for rows without a positive or without a negative."""
    npos, nneg = count_columns(spec, n, m, like.device)
    contrasted = (nneg > 0) if separate_positive else (npos > 0) & (nneg > 0)
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    if weights is None:
        return contrasted.to(dtype)
    return weights * contrasted.to(weights.dtype)


def _triton_dtype(*tensors: Tensor) -> torch.dtype:
    dtypes = {t.dtype for t in tensors}
    return dtypes.pop() if len(dtypes) == 1 and next(iter(dtypes)) in (torch.float16, torch.bfloat16) else torch.float32


def fused_info_nce(
    query: Tensor,
    candidates: Tensor,
    *,
    positive: Tensor | None = None,
    positive_index: Tensor | None = None,
    labels: Tensor | None = None,
    candidate_labels: Tensor | None = None,
    positive_mask: Tensor | None = None,
    exclude_index: Tensor | None = None,
    negative_mask: Tensor | None = None,
    temperature: float | Tensor = 0.07,
    top_k: int | None = None,
    weights: Tensor | None = None,
    reduction: str = "mean",
    normalize: bool = True,
    impl: str = "auto",
    chunk_size: int | None = None,
    column_chunk_size: int | None = None,
) -> Tensor:
    r"""InfoNCE (one or several positives per row) without materialising the ``(N, M)`` logits.

    Logits are ``s_ij = cos(query_i, candidates_j) / tau`` (dot products with ``normalize=False``).
    Row ``i`` has positives ``P_i`` and negatives ``K_i`` among the candidate columns, plus an
    optional separate positive ``p_i = cos(query_i, positive_i) / tau``:

    .. math::
        \ell_i = \log\Big(e^{p_i} + \sum_{j \in P_i \cup K_i} e^{s_{ij}}\Big)
                 - \frac{p_i + \sum_{j \in P_i} s_{ij}}{1 + |P_i|}

    (drop the ``p_i`` terms when ``positive`` is not given). With several positives this is the
    "outside the log" average of SupCon / UniCL — the soft-target cross-entropy of
    :class:`~qualcl.losses.ClipLoss` with labels.

    **Rows with nothing to contrast leave the mean.** A row without any positive, or without any
    negative, has loss 0 and weight 0: ``reduction="mean"`` is
    ``sum_i w_i c_i l_i / sum_i w_i c_i`` with ``c_i = 1`` when row ``i`` has a positive and a
    negative, so adding such rows (a label seen once in a SupCon batch, a row whose negatives are
    all masked) changes nothing, and a batch of a single label gives 0. This is
    pytorch-metric-learning's ``SupConLoss`` (0 without negatives; its ``AvgNonZeroReducer`` also
    drops a contrasted row whose loss rounds to exactly 0, which qualcl keeps). ``"sum"`` and
    ``"none"`` are unaffected (those rows are 0 there).

    - ``P_i``: column ``positive_index[i]`` (``-1`` = none), every ``j`` with
      ``labels[i] == candidate_labels[j]``, and ``positive_mask[i, j]`` (a dense fallback).
    - ``exclude_index[i]``: a column that row ``i`` ignores entirely (its own view in SupCon).
    - ``K_i``: every other column that ``negative_mask`` keeps (all by default); with ``top_k``
      only the ``top_k`` most similar of them, ties with the ``top_k``-th value kept (selection on
      detached logits; the kept logits stay differentiable), all of them when fewer are kept.

    The compact forms (indices, labels) cost O(N + M) memory; the dense ``(N, M)`` masks are accepted
    as a fallback. The dense reference :func:`qualcl.functional.info_nce` ``(q, p, negatives)`` is
    ``fused_info_nce(q, negatives, positive=p)``; its in-batch form (``negatives=None``) is
    ``fused_info_nce(q, p, positive_index=torch.arange(N))``; CLIP's image→text direction is
    ``fused_info_nce(img, txt, positive_index=torch.arange(N) + offset)`` or, class-level,
    ``fused_info_nce(img, txt, labels=y, candidate_labels=y_all)``; SupCon is
    ``fused_info_nce(z, z, labels=y, candidate_labels=y, exclude_index=torch.arange(N))``. Most users
    call it through :class:`qualcl.losses.InfoNCE`, which also handles ``torch.distributed``.

    Implementations (``impl``): ``"triton"`` (CUDA; online log-sum-exp over column tiles, top-K by a
    fused threshold filter, FlashAttention-2 style recomputing backward with no atomics),
    ``"torch"`` (row blocks of ``chunk_size`` × column blocks of ``column_chunk_size``; memory
    O((N + M)·D + chunk·M)), ``"naive"`` (dense, for tests) and ``"auto"`` (Triton on CUDA when
    available, else torch). All are deterministic. Half inputs are computed in float32 (float64
    stays float64 on the torch paths); the result has that dtype.

    Args:
        query: ``(N, D)`` anchors.
        candidates: ``(M, D)`` candidates (other view, text features, memory bank, ...).
        positive: ``(N, D)`` separate positive of each row (not among the candidates).
        positive_index: ``(N,)`` integer column of each row's positive, ``-1`` for none.
        labels: ``(N,)`` integer labels of the rows (with ``candidate_labels``): same-label columns
            are positives.
        candidate_labels: ``(M,)`` integer labels of the candidates.
        positive_mask: ``(N, M)`` bool, True = positive (dense fallback).
        exclude_index: ``(N,)`` integer column ignored by each row, ``-1`` for none.
        negative_mask: ``(N, M)`` bool, True = negative kept (dense fallback).
        temperature: ``tau > 0``; a tensor that requires grad is learnt (the logits are divided by it).
        top_k: Keep only the ``top_k`` most similar negatives per row, ``1 <= top_k <= M``.
        weights: ``(N,)`` non-negative per-anchor weights.
        reduction: ``"mean"`` (weighted mean), ``"sum"`` or ``"none"`` (``(N,)`` weighted losses).
        normalize: L2-normalise ``query``, ``candidates`` and ``positive`` (cosine similarity).
        impl: ``"auto"``, ``"triton"``, ``"torch"`` or ``"naive"``.
        chunk_size: Rows per block of the torch path (default: ``2^22`` logits per block).
        column_chunk_size: Columns per block of the torch path (default: ``min(M, 65536)``).

    Returns:
        Scalar loss, or ``(N,)`` with ``reduction="none"``.

    Raises:
        ValueError: On mismatched shapes, non-finite inputs, ``temperature <= 0``, ``top_k``
            outside ``[1, M]``, indices outside ``[-1, M)``, no positive given, a bad
            ``reduction`` or ``impl``.
        TypeError: On a wrong dtype (integer embeddings, float labels, non-bool masks).

    Examples:
        >>> import torch
        >>> from qualcl.kernels import fused_info_nce
        >>> q, k = torch.randn(64, 32), torch.randn(64, 32)
        >>> loss = fused_info_nce(q, k, positive_index=torch.arange(64), temperature=0.1, top_k=16)
        >>> loss.shape
        torch.Size([])

    Reference:
        Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018; Khosla et al.,
        "Supervised Contrastive Learning", 2020 (multi-positive); Dao, "FlashAttention-2", 2023
        (online log-sum-exp, recomputing backward); Chen et al., "Breaking the Memory Barrier"
        (Inf-CL), 2024.
    """
    return fused_info_nce_rows(
        query,
        candidates,
        positive=positive,
        positive_index=positive_index,
        labels=labels,
        candidate_labels=candidate_labels,
        positive_mask=positive_mask,
        exclude_index=exclude_index,
        negative_mask=negative_mask,
        temperature=temperature,
        top_k=top_k,
        weights=weights,
        reduction=reduction,
        normalize=normalize,
        impl=impl,
        chunk_size=chunk_size,
        column_chunk_size=column_chunk_size,
    )[0]


def fused_info_nce_rows(
    query: Tensor,
    candidates: Tensor,
    *,
    positive: Tensor | None = None,
    positive_index: Tensor | None = None,
    labels: Tensor | None = None,
    candidate_labels: Tensor | None = None,
    positive_mask: Tensor | None = None,
    exclude_index: Tensor | None = None,
    negative_mask: Tensor | None = None,
    temperature: float | Tensor = 0.07,
    top_k: int | None = None,
    weights: Tensor | None = None,
    reduction: str = "mean",
    normalize: bool = True,
    impl: str = "auto",
    chunk_size: int | None = None,
    column_chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`fused_info_nce` and the ``(N,)`` effective row weights ``w_i c_i`` its mean divides by.

    For the losses' distributed reduction: with ``reduction="sum"`` the first result is the local
    ``sum_i w_i c_i l_i`` and the global denominator is the all-reduced sum of the second.
    """
    tau = _check_temperature(temperature)
    check_reduction(reduction)
    check_embeddings("query", query, nonzero=normalize)
    n, d = query.shape
    check_embeddings("candidates", candidates, dim=d, nonzero=normalize)
    m = candidates.shape[0]
    device = query.device
    if positive is not None:
        check_embeddings("positive", positive, dim=d, nonzero=normalize)
        if positive.shape[0] != n:
            raise ValueError(f"positive must have shape ({n}, {d}) like query, got {tuple(positive.shape)}")
    if (labels is None) != (candidate_labels is None):
        raise ValueError("labels and candidate_labels must be given together (row labels and column labels)")
    spec = ColumnSpec(
        None if positive_index is None else check_index("positive_index", positive_index, n, m, device),
        None if labels is None else check_labels("labels", labels, n, device),
        None if candidate_labels is None else check_labels("candidate_labels", candidate_labels, m, device),
        positive_mask,
        None if exclude_index is None else check_index("exclude_index", exclude_index, n, m, device),
        negative_mask,
    )
    if positive_mask is not None:
        check_mask("positive_mask", positive_mask, (n, m))
    if negative_mask is not None:
        check_mask("negative_mask", negative_mask, (n, m))
    if positive is None and spec.positive_index is None and spec.labels is None and positive_mask is None:
        raise ValueError(
            "no positives: pass positive=, positive_index=, labels= with candidate_labels=, or positive_mask="
        )
    check_top_k(top_k, m)
    if weights is not None:
        check_weights("weights", weights, n)
    _check_chunk("chunk_size", chunk_size)
    _check_chunk("column_chunk_size", column_chunk_size)
    weights = _contrasted_weights(spec, n, m, positive is not None, weights, query)

    inputs = (query, candidates) if positive is None else (query, candidates, positive)
    backend = resolve_impl(impl, *inputs)
    if backend == "triton" and (any(t.dtype == torch.float64 for t in inputs) or d > TRITON_MAX_DIM):
        if impl == "triton":
            raise ValueError(f"impl='triton' supports float16/bfloat16/float32 and D <= {TRITON_MAX_DIM}")
        backend = "torch"
    compute = torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32
    storage = _triton_dtype(*inputs) if backend == "triton" else compute

    def prepare(x: Tensor) -> Tensor:
        x = x.to(compute)
        return (unit_rows(x) if normalize else x).to(storage)

    q, c = prepare(query), prepare(candidates)
    scale: float | Tensor = 1.0 / tau
    if isinstance(scale, Tensor) and backend != "naive":
        q = (q.to(compute) * scale.to(compute)).to(storage)
        scale = 1.0
    positive_logit = None
    if positive is not None:
        p = positive.to(compute)
        p = F.normalize(p, dim=1) if normalize else p
        positive_logit = (q.to(compute) * p).sum(dim=1) * scale

    if backend == "naive":
        dense: Tensor = naive_info_nce(
            q, c, spec, scale=scale, top_k=top_k, positive_logit=positive_logit, weights=weights, reduction=reduction
        )
        return dense, weights.detach()
    assert isinstance(scale, float)
    rows, cols = block_shape(n, m, chunk_size, column_chunk_size)
    grad_on = torch.is_grad_enabled()
    op = torch.ops.qualcl.info_nce if through_custom_op() else _EagerInfoNCE.apply
    out = op(
        q,
        c,
        positive_logit,
        weights,
        *spec,
        scale,
        top_k,
        reduction,
        backend,
        rows,
        cols,
        grad_on and q.requires_grad,
        grad_on and c.requires_grad,
    )
    loss: Tensor = out[0]
    return loss, weights.detach()
