"""Circle loss per anchor or over all pairs (dense, streamed or on mined pairs) and mirror relevance degrees."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import (
    check_choice,
    check_embeddings,
    check_float_tensor,
    check_int,
    check_integer_tensor,
    check_labels,
    check_number,
    check_positive,
    check_reduction,
    check_weights,
)
from qualcl.distributed import gather_no_grad, gather_with_grad
from qualcl.functional.info_nce import compute_dtype
from qualcl.functional.reduction import weighted_reduce

__all__ = ["AGGREGATES", "circle_loss", "relevance_degrees"]

AGGREGATES = ("per_anchor", "global")
STREAM_ABOVE = 1 << 22
"""Above this many candidate pairs ``N · M`` (16 MiB of float32 similarities) the loss streams."""
BLOCK_ELEMENTS = 1 << 20
"""Pairs per streamed block: rows per block are ``BLOCK_ELEMENTS // C`` for ``C`` columns."""
DEFAULT_COLUMNS = 4096
"""Columns per streamed block when ``chunk_size`` is not given."""


def check_margin(margin: Any, name: str = "margin") -> float:
    """The circle-loss relaxation ``m`` in ``[0, 1]`` (see :func:`circle_loss` for why), named ``name`` in errors."""
    return check_number(name, margin, minimum=0.0, maximum=1.0)


def relevance_degrees(embeddings: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Cosine agreement of the two halves of each descriptor, clamped to ``[eps, 1]`` and detached.

    A mirror-attention descriptor is ``[horizontal-branch half | vertical-branch half]``; how well
    the halves agree is its "relevance degree", which the fine triplet loss weighs positive pairs
    with (the public FundusDR code's ``degs``). It is a stop-gradient weight: the result carries
    no gradient. The public code divides by the degrees without a guard; the clamp to
    ``[eps, 1]`` keeps ``1 / deg`` finite for halves that are orthogonal or opposed (GeM
    descriptors are non-negative, so their degrees are ``>= 0`` anyway).

    Args:
        embeddings: ``(N, 2D)`` descriptors (even width).
        eps: Lower clamp, ``0 < eps <= 1``.

    Returns:
        ``(N,)`` degrees in ``[eps, 1]``, without gradient, in the dtype of ``embeddings``.

    Raises:
        ValueError: On a non-finite or empty input, an odd width or ``eps`` outside ``(0, 1]``.

    Examples:
        >>> import torch
        >>> relevance_degrees(torch.tensor([[1.0, 0.0, 2.0, 0.0], [1.0, 0.0, 0.0, 1.0]]), eps=0.5)
        tensor([1.0000, 0.5000])

    Reference:
        Fang et al., "Deep metric learning with mirror attention and fine triplet loss for fundus
        image retrieval in ophthalmology", Biomedical Signal Processing and Control 80, 2023.
    """
    check_embeddings("embeddings", embeddings)
    if embeddings.shape[1] % 2:
        raise ValueError(
            f"embeddings must have an even width (the two mirror-attention halves), got shape {tuple(embeddings.shape)}"
        )
    eps = check_number("eps", eps, minimum=0.0, maximum=1.0, exclusive_minimum=True)
    half = embeddings.shape[1] // 2
    with torch.no_grad():
        degree = F.cosine_similarity(embeddings[:, :half], embeddings[:, half:], dim=1)
        return degree.clamp(eps, 1.0)


# ------------------------------------------------------------------------------------- pair maths
def _positive_logits(s: Tensor, w: Tensor | None, margin: float, gamma: float, detach_alpha: bool) -> Tensor:
    """``−γ · w · [1 + m − s]_+ · (s − (1 − m))`` of positive-pair similarities ``s`` (autograd)."""
    alpha = torch.relu((1.0 + margin) - s)
    if detach_alpha:
        alpha = alpha.detach()
    scale = -gamma if w is None else -gamma * w
    return scale * alpha * (s - (1.0 - margin))


def _negative_logits(s: Tensor, margin: float, gamma: float, detach_alpha: bool) -> Tensor:
    """``γ · [s + m]_+ · (s − m)`` of negative-pair similarities ``s`` (autograd)."""
    alpha = torch.relu(s + margin)
    if detach_alpha:
        alpha = alpha.detach()
    return gamma * alpha * (s - margin)


def _softplus(x: Tensor) -> Tensor:
    """``log(1 + e^x)`` exactly and stably (``F.softplus`` returns ``x`` itself above 20, as PML's does)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def _row_lse(logits: Tensor) -> Tensor:
    """Row-wise log-sum-exp of ``(R, C)`` logits holding ``-inf`` for excluded pairs.

    Rows with nothing kept give ``-inf`` with a zero (never NaN) gradient; only ``(R,)`` vectors
    are guarded, so the matrix is read four times (max, shift, exp, sum).
    """
    if logits.shape[1] == 0:
        return logits.new_full((logits.shape[0],), -math.inf)
    peak = logits.detach().amax(dim=1)
    has = torch.isfinite(peak)
    safe = torch.where(has, peak, 0.0)
    total = torch.exp(logits - safe[:, None]).sum(dim=1)
    return torch.where(has, torch.log(torch.where(has, total, 1.0)) + safe, -math.inf)


def _segment_lse(values: Tensor, rows: Tensor, n: int) -> Tensor:
    """Per-row log-sum-exp of ``values`` grouped by ``rows`` (``-inf`` for rows without values)."""
    peak = values.new_full((n,), -math.inf).scatter_reduce(0, rows, values.detach(), reduce="amax")
    present = torch.isfinite(peak)
    safe = torch.where(present, peak, 0.0)
    total = values.new_zeros(n).index_add(0, rows, torch.exp(values - safe[rows]))
    return torch.where(present, torch.log(torch.where(present, total, 1.0)) + safe, -math.inf)


class _Pairs(NamedTuple):
    """Which pairs count and how positives are weighted: everything a block needs besides the embeddings.

    Rows are the local anchors, columns the (possibly gathered) references. The self pairs are
    compared by *global* index: row ``i`` is column ``i + row_offset`` (under DDP the rank's offset
    into the gathered batch, 0 otherwise).
    """

    row_labels: Tensor
    col_labels: Tensor
    dense_w: Tensor | None  # (N, M) positive-pair weights
    row_w: Tensor | None  # (N,) factor
    col_w: Tensor | None  # (M,) factor
    self_mode: str  # "none", "exclude" (j != i: the batch is its own reference) or "upper" (j > i)
    row_offset: int = 0  # the column of local row 0 (global index of the first local anchor)

    def skip(self, rows: range, cols: range) -> bool:
        """Whether the block holds no pair at all (``"upper"``: every ``j <= i``)."""
        return self.self_mode == "upper" and cols.stop - 1 <= rows.start + self.row_offset

    def same(self, rows: range, cols: range) -> Tensor:
        """``(R, C)`` bool: equal labels (positives, and the excluded self pairs)."""
        return self.row_labels[rows.start : rows.stop, None] == self.col_labels[None, cols.start : cols.stop]

    def positives(self, rows: range, cols: range, same: Tensor) -> tuple[Tensor, Tensor]:
        """Block ``(row, col)`` indices of the block's positive pairs (self pairs dropped)."""
        pr, pc = same.nonzero(as_tuple=True)
        if self.self_mode == "none":
            return pr, pc
        gr, gc = pr + (rows.start + self.row_offset), pc + cols.start
        keep = gc != gr if self.self_mode == "exclude" else gc > gr
        return pr[keep], pc[keep]

    def weight(self, gr: Tensor, gc: Tensor) -> Tensor | None:
        """Positive-pair weights at local row ``gr`` and column ``gc`` (``None``: all 1)."""
        if self.dense_w is not None:
            return self.dense_w[gr, gc]
        if self.row_w is None or self.col_w is None:
            return None
        return self.row_w[gr] * self.col_w[gc]

    def drop_negatives_(self, logits: Tensor, same: Tensor, rows: range, cols: range) -> Tensor:
        """Set the logits of everything but negative pairs to ``-inf`` (in place)."""
        logits.masked_fill_(same, -math.inf)  # positives, and the self pairs (same label)
        first, last = rows.start + self.row_offset, rows.stop - 1 + self.row_offset
        if self.self_mode == "upper" and cols.start <= last:  # the block reaches j <= i
            gr = torch.arange(first, last + 1, device=logits.device)[:, None]
            gc = torch.arange(cols.start, cols.stop, device=logits.device)[None, :]
            logits.masked_fill_(gc <= gr, -math.inf)
        return logits


def _blocks(n: int, m: int, columns: int) -> list[tuple[range, range]]:
    cols = max(1, min(columns, m))
    rows = max(1, min(n, BLOCK_ELEMENTS // cols))
    return [
        (range(r0, min(r0 + rows, n)), range(c0, min(c0 + cols, m)))
        for r0 in range(0, n, rows)
        for c0 in range(0, m, cols)
    ]


def _dense_row_lse(
    q: Tensor, r: Tensor, pairs: _Pairs, margin: float, gamma: float, detach_alpha: bool
) -> tuple[Tensor, Tensor]:
    """Row-wise positive and negative log-sum-exps on the full ``(N, M)`` matrix, by autograd."""
    n, m = q.shape[0], r.shape[0]
    rows, cols = range(n), range(m)
    s = q @ r.T
    same = pairs.same(rows, cols)
    pr, pc = pairs.positives(rows, cols, same)
    lp = _positive_logits(s[pr, pc], pairs.weight(pr, pc), margin, gamma, detach_alpha)
    ln = pairs.drop_negatives_(_negative_logits(s, margin, gamma, detach_alpha), same, rows, cols)
    return _segment_lse(lp, pr, n), _row_lse(ln)


def _negative_block(s: Tensor, margin: float, gamma: float) -> tuple[Tensor, Tensor]:
    """In place on ``s``: ``s`` clamped at ``−m`` and the negative logits ``γ (c² − m²) = γ [s + m]_+ (s − m)``."""
    clamped = s.clamp_min_(-margin)
    return clamped, torch.addcmul(clamped.new_tensor(-gamma * margin * margin), clamped, clamped, value=gamma)


class _StreamedRowLSE(torch.autograd.Function):
    """Row-wise positive and negative log-sum-exps of circle logits, streamed over ``(R, C)`` blocks.

    Each block's similarities are one GEMM; its negatives are handled densely (about ten passes
    over the block), its positives as a sparse list (gathered, then a segment log-sum-exp).
    Forward keeps a running log-sum-exp per row; backward recomputes each block, so memory is
    O(R·C + (N + M)·D) whatever ``N`` and ``M``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        r: Tensor,
        pairs: _Pairs,
        margin: float,
        gamma: float,
        detach_alpha: bool,
        columns: int,
    ) -> tuple[Tensor, Tensor]:
        n, m = q.shape[0], r.shape[0]
        pos = q.new_full((n,), -math.inf)
        neg = q.new_full((n,), -math.inf)
        for rows, cols in _blocks(n, m, columns):
            if pairs.skip(rows, cols):
                continue
            block = slice(rows.start, rows.stop)
            s = q[block] @ r[cols.start : cols.stop].T
            same = pairs.same(rows, cols)
            pr, pc = pairs.positives(rows, cols, same)
            gr, gc = pr + rows.start, pc + cols.start
            lp = _positive_logits(s[pr, pc], pairs.weight(gr, gc), margin, gamma, True)
            pos[block] = torch.logaddexp(pos[block], _segment_lse(lp, pr, len(rows)))
            _, ln = _negative_block(s, margin, gamma)
            neg[block] = torch.logaddexp(neg[block], _row_lse(pairs.drop_negatives_(ln, same, rows, cols)))
        ctx.save_for_backward(q, r, pos, neg)
        ctx.pairs = pairs
        ctx.settings = (margin, gamma, detach_alpha, columns)
        return pos, neg

    @staticmethod
    def backward(ctx: Any, grad_pos: Tensor, grad_neg: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, r, pos, neg = ctx.saved_tensors
        pairs: _Pairs = ctx.pairs
        margin, gamma, detach_alpha, columns = ctx.settings
        n, m = q.shape[0], r.shape[0]
        grad_q, grad_r = torch.zeros_like(q), torch.zeros_like(r)
        # rows without a positive (negative) hold -inf there and have nothing to differentiate
        has_pos, has_neg = torch.isfinite(pos), torch.isfinite(neg)
        gp, pos_ref = torch.where(has_pos, grad_pos, 0.0), torch.where(has_pos, pos, 0.0)
        gn, neg_ref = torch.where(has_neg, grad_neg, 0.0) * gamma, torch.where(has_neg, neg, 0.0)
        for rows, cols in _blocks(n, m, columns):
            if pairs.skip(rows, cols):
                continue
            block = slice(rows.start, rows.stop)
            qb, rb = q[block], r[cols.start : cols.stop]
            s = qb @ rb.T
            same = pairs.same(rows, cols)
            pr, pc = pairs.positives(rows, cols, same)
            gr, gc = pr + rows.start, pc + cols.start
            s_pos = s[pr, pc]
            # positives: d lp / d s = −γ w (α⁺ − [α⁺ not detached] 1[α⁺ > 0] (s − Δ_p))
            w = pairs.weight(gr, gc)
            lp = _positive_logits(s_pos, w, margin, gamma, True)
            alpha_p = torch.relu((1.0 + margin) - s_pos)
            slope_p = alpha_p if detach_alpha else alpha_p - (alpha_p > 0).to(s.dtype) * (s_pos - (1.0 - margin))
            coef_p = -gamma * slope_p if w is None else -gamma * w * slope_p
            g_pos = gp[gr] * torch.exp(lp - pos_ref[gr]) * coef_p
            # negatives: softmax weight within the row's negatives × d ln / d s, where
            # d ln / d s = γ α⁻ (detached) or 2 γ s 1[α⁻ > 0]; γ is folded into gn
            clamped, ln = _negative_block(s, margin, gamma)
            g = pairs.drop_negatives_(ln, same, rows, cols).sub_(neg_ref[block, None]).exp_().mul_(gn[block, None])
            if detach_alpha:
                g.mul_(clamped.add_(margin))
            else:
                g.mul_(torch.where(clamped > -margin, 2.0 * clamped, 0.0))
            g[pr, pc] = g_pos  # those entries are 0 (their negative logits are -inf)
            grad_q[block] += g @ rb
            grad_r[cols.start : cols.stop] += g.T @ qb
        return grad_q, grad_r, None, None, None, None, None


# ------------------------------------------------------------------------------------ mined pairs
def _check_pairs(indices_tuple: Any, n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PML's pair tuple ``(a1, p, a2, n)`` (a triplet tuple ``(a, p, n)`` becomes ``(a, p, a, n)``), each pair once."""
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        got = f"a {type(indices_tuple).__name__}"
        if isinstance(indices_tuple, (tuple, list)):
            got += f" of length {len(indices_tuple)}"
        raise ValueError(f"indices_tuple must be a pair tuple (a1, p, a2, n) or a triplet tuple (a, p, n), got {got}")
    parts = []
    for k, t in enumerate(indices_tuple):
        ids = check_integer_tensor(f"indices_tuple[{k}]", t, device=device, what="indices")
        if ids.ndim != 1:
            raise ValueError(f"indices_tuple[{k}] must be 1-D, got shape {tuple(ids.shape)}")
        parts.append(ids)
    if len(parts) == 3:
        parts = [parts[0], parts[1], parts[0], parts[2]]
    a1, p, a2, neg = parts
    if a1.shape != p.shape or a2.shape != neg.shape:
        raise ValueError(
            "indices_tuple: anchors and their partners must have equal lengths, got "
            f"{a1.numel()} anchors / {p.numel()} positives and {a2.numel()} anchors / {neg.numel()} negatives"
        )
    for name, t, bound in (("anchors", a1, n), ("positives", p, m), ("anchors", a2, n), ("negatives", neg, m)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= bound):
            raise ValueError(f"indices_tuple {name} must lie in [0, {bound}), got [{int(t.min())}, {int(t.max())}]")

    def unique(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        key = torch.unique(a * m + b)
        return key // m, key % m

    a1, p = unique(a1, p)
    a2, neg = unique(a2, neg)
    return a1, p, a2, neg


# ----------------------------------------------------------------------------------- row terms
class _Factors(NamedTuple):
    dense: Tensor | None
    row: Tensor | None
    col: Tensor | None


def _check_pair_weights(
    pair_weights: Tensor | tuple[Tensor, Tensor] | None, n: int, m_local: int, m: int, dtype: torch.dtype
) -> _Factors:
    """Detached positive-pair weights: dense ``(n, m)`` (``m`` gathered columns) or factors ``(n,), (m_local,)``."""
    if isinstance(pair_weights, (tuple, list)):
        if len(pair_weights) != 2:
            raise ValueError(
                f"pair_weights as factors must be a pair (row (N,), col (M,)), got {len(pair_weights)} items"
            )
        check_weights("pair_weights[0]", pair_weights[0], n)
        check_weights("pair_weights[1]", pair_weights[1], m_local)
        row, col = (t.detach().to(dtype) for t in pair_weights)
        return _Factors(None, row, col)
    if pair_weights is None:
        return _Factors(None, None, None)
    check_float_tensor("pair_weights", pair_weights)
    if tuple(pair_weights.shape) != (n, m):
        raise ValueError(
            f"pair_weights must have shape (N, M) = ({n}, {m}) or be a (row, col) pair, "
            f"got shape {tuple(pair_weights.shape)}"
        )
    check_weights("pair_weights (flattened)", pair_weights.reshape(-1), n * m)
    return _Factors(pair_weights.detach().to(dtype), None, None)


def circle_row_terms(
    embeddings: Tensor,
    labels: Tensor | None,
    indices_tuple: tuple[Tensor, ...] | None,
    ref_emb: Tensor | None,
    ref_labels: Tensor | None,
    *,
    margin: float,
    gamma: float,
    aggregate: str,
    pair_weights: Tensor | tuple[Tensor, Tensor] | None,
    detach_alpha: bool,
    chunk_size: int | None,
    distributed: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Each local anchor's positive and negative log-sum-exps, against every rank's references when ``distributed``.

    The checks and pair logic of :func:`circle_loss` (whose docstring explains the arguments),
    without its reduction. With ``distributed`` (an initialised process group of several
    processes) the reference rows (``embeddings`` themselves, or ``ref_emb``) are gathered with
    :func:`~qualcl.distributed.gather_with_grad` in rank order, their labels and column factors
    with :func:`~qualcl.distributed.gather_no_grad`; the self pairs are found by global index.
    ``indices_tuple`` then holds each rank's local indices (anchors into ``embeddings``,
    positives and negatives into its own reference rows), which are shifted by the rank's offset
    into the gathered columns; a dense ``pair_weights`` is ``(N, M)`` over the gathered columns.

    Returns:
        ``(pos (N,), neg (N,), zero)``: ``-inf`` where an anchor has no positive (negative), and a
        zero attached to the inputs' graph.
    """
    columns = DEFAULT_COLUMNS if chunk_size is None else check_int("chunk_size", chunk_size)
    check_embeddings("embeddings", embeddings, nonzero=True)
    n, d = embeddings.shape
    device = embeddings.device
    own = ref_emb is None
    if ref_emb is not None:
        check_embeddings("ref_emb", ref_emb, dim=d, nonzero=True)
        if ref_labels is None and indices_tuple is None:
            raise ValueError("ref_emb needs ref_labels (or an indices_tuple naming the pairs), got ref_labels=None")
    elif ref_labels is not None:
        raise ValueError("ref_labels are the labels of ref_emb, got ref_labels without ref_emb")
    m_local = n if ref_emb is None else ref_emb.shape[0]
    if indices_tuple is None and labels is None:
        raise ValueError("circle_loss needs labels or an indices_tuple, got neither")
    row_labels = None if labels is None else check_labels("labels", labels, n, device)
    col_labels = row_labels if own else None
    if ref_labels is not None:
        col_labels = check_labels("ref_labels", ref_labels, m_local, device)
    dtype = compute_dtype(embeddings, *([] if ref_emb is None else [ref_emb]))
    q = F.normalize(embeddings.to(dtype), dim=1)
    r = q if ref_emb is None else F.normalize(ref_emb.to(dtype), dim=1)
    col_offset = 0
    if distributed:
        r, col_offset = gather_with_grad(r)
        if col_labels is not None and indices_tuple is None:
            col_labels = gather_no_grad(col_labels)
    m = r.shape[0]
    factors = _check_pair_weights(pair_weights, n, m_local, m, dtype)
    col_w = factors.col
    if distributed and col_w is not None:
        col_w = gather_no_grad(col_w)
    zero = 0.0 * q.sum()  # keeps the result attached to the graph whatever is selected

    if indices_tuple is not None:
        a1, p, a2, ng = _check_pairs(indices_tuple, n, m_local, device)
        p, ng = p + col_offset, ng + col_offset
        if factors.dense is not None:
            w: Tensor | None = factors.dense[a1, p]
        else:
            w = None if factors.row is None or col_w is None else factors.row[a1] * col_w[p]
        lp = _positive_logits((q[a1] * r[p]).sum(1), w, margin, gamma, detach_alpha)
        ln = _negative_logits((q[a2] * r[ng]).sum(1), margin, gamma, detach_alpha)
        return _segment_lse(lp, a1, n), _segment_lse(ln, a2, n), zero
    assert row_labels is not None  # checked above
    assert col_labels is not None
    self_mode = "none" if not own else ("upper" if aggregate == "global" else "exclude")
    pairs = _Pairs(row_labels, col_labels, factors.dense, factors.row, col_w, self_mode, col_offset if own else 0)
    if chunk_size is not None or n * m > STREAM_ABOVE:
        pos, neg = _StreamedRowLSE.apply(q, r, pairs, margin, gamma, detach_alpha, columns)
    else:
        pos, neg = _dense_row_lse(q, r, pairs, margin, gamma, detach_alpha)
    return pos, neg, zero


def circle_per_anchor(pos: Tensor, neg: Tensor, zero: Tensor) -> tuple[Tensor, Tensor]:
    """``(losses (N,), counted (N,) bool)``: ``softplus(pos + neg)`` where an anchor has both, else 0 (not counted)."""
    valid = torch.isfinite(pos) & torch.isfinite(neg)
    losses = torch.where(valid, _softplus(torch.where(valid, pos + neg, 0.0)), 0.0) + zero
    return losses, valid


def circle_global(pos: Tensor, neg: Tensor, zero: Tensor, *, distributed: bool = False) -> Tensor:
    """``softplus(LSE(pos) + LSE(neg))`` over every row, of every rank when ``distributed``.

    Under DDP each rank's two log-sum-exps are gathered with
    :func:`~qualcl.distributed.gather_with_grad`, so every rank returns the same global value and
    DDP's gradient average is its exact gradient.
    """
    lse_p, lse_n = _row_lse(pos[None]), _row_lse(neg[None])  # (1,) each
    if distributed:
        lse_p = _row_lse(gather_with_grad(lse_p)[0][None])
        lse_n = _row_lse(gather_with_grad(lse_n)[0][None])
    return _softplus(lse_p + lse_n)[0] + zero


# ------------------------------------------------------------------------------------------- API
def circle_loss(
    embeddings: Tensor,
    labels: Tensor | None = None,
    indices_tuple: tuple[Tensor, ...] | None = None,
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    margin: float = 0.25,
    gamma: float = 256.0,
    aggregate: str = "per_anchor",
    pair_weights: Tensor | tuple[Tensor, Tensor] | None = None,
    detach_alpha: bool = True,
    weights: Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    r"""Circle loss on cosine similarities, per anchor (pytorch-metric-learning's) or over all pairs.

    With ``s_ij`` the cosine similarity of anchor ``i`` and reference ``j`` (inputs are
    L2-normalised inside), relaxation ``m`` and scale ``γ``, every positive pair ``(i, j) ∈ P`` and
    negative pair ``(i, j) ∈ N`` has the logit

    .. math::
        \ell^{+}_{ij} = -\gamma\, w_{ij}\, \alpha^{+}_{ij} (s_{ij} - \Delta_p), \qquad
        \ell^{-}_{ij} = \gamma\, \alpha^{-}_{ij} (s_{ij} - \Delta_n),

    .. math::
        \alpha^{+}_{ij} = [1 + m - s_{ij}]_+, \quad \alpha^{-}_{ij} = [s_{ij} + m]_+, \quad
        \Delta_p = 1 - m, \quad \Delta_n = m,

    where ``w_ij`` are the positive-pair weights (``pair_weights``, 1 by default). Two
    aggregations:

    * ``aggregate="per_anchor"`` (pytorch-metric-learning's ``CircleLoss``):
      :math:`L_i = \operatorname{softplus}\big(\operatorname{LSE}_{j \in P(i)} \ell^{+}_{ij}
      + \operatorname{LSE}_{j \in N(i)} \ell^{-}_{ij}\big)`, then the (``weights``-weighted)
      mean over the anchors that have at least one positive and one negative; the others get
      :math:`L_i = 0` and leave the mean (PML's ``AvgNonZeroReducer``).
    * ``aggregate="global"`` (the fine triplet loss of the public FundusDR code):
      :math:`L = \log\big(1 + \sum_{P} e^{\ell^{+}} \sum_{N} e^{\ell^{-}}\big)
      = \operatorname{softplus}(\operatorname{LSE}_P \ell^{+} + \operatorname{LSE}_N \ell^{-})`,
      one scalar over all pairs of the batch. When the batch is its own reference each unordered
      pair counts once (``j > i``, the code's upper triangle); with ``ref_emb`` every ``(i, j)``.
      ``detach_alpha=False, gamma=1, margin=0.25`` is that code exactly.

    Everything is computed with log-sum-exps, never with products of raw exponentials, so
    ``γ = 256`` is safe in float32; softplus is the exact ``log(1 + e^x)`` (PML's ``Softplus``
    returns ``x`` above 20, a relative difference below ``e^{-20}``). ``α`` is a constant by
    default (``detach_alpha=True``: the paper's and PML's choice); ``detach_alpha=False`` also
    differentiates it (the public code).
    Pair weights are constants too: they are detached, no gradient reaches ``pair_weights``.

    Pairs: without ``indices_tuple`` every pair of ``labels`` × ``ref_labels`` counts (an anchor
    never pairs with itself when the batch is its own reference). With ``indices_tuple`` only the
    given pairs count, each once however often it is listed (as PML's masks do), and no pair is
    excluded (also not ``(i, i)``: PML keeps it too); ``labels`` are then optional.

    Memory: at most a few ``(N, M)`` matrices (the dense autograd path, up to ``2^22`` pairs).
    Beyond ``N · M > 2^22`` pairs, or whenever ``chunk_size`` is given, the similarities are
    streamed over blocks of ``chunk_size`` columns (and enough rows for about ``2^20`` pairs) with
    an online log-sum-exp, and recomputed block by block in the backward pass: memory
    O(block + (N + M) · D). Both paths agree to rounding. With ``indices_tuple`` only the selected
    pairs are computed (segment log-sum-exps per anchor).

    Valid ranges: ``0 <= m <= 1`` (for ``m < 0`` the positives' decision boundary
    ``Δ_p = 1 - m`` lies above 1, where no cosine reaches; for ``m > 1`` the negatives'
    ``Δ_n = m`` lies above every cosine, so every negative is always past it) and ``γ > 0``.

    Args:
        embeddings: ``(N, D)`` anchors, non-zero rows.
        labels: ``(N,)`` integer labels (optional with ``indices_tuple``).
        indices_tuple: PML's pair tuple ``(a1, p, a2, n)`` or triplet tuple ``(a, p, n)``
            (e.g. from a PML miner or :func:`qualcl.kernels.batch_hard_triplets`); ``p`` and
            ``n`` index ``ref_emb`` when it is given.
        ref_emb: ``(M, D)`` reference embeddings (default: the batch itself).
        ref_labels: ``(M,)`` labels of ``ref_emb``; required with it unless ``indices_tuple``.
        margin: Relaxation ``m`` in ``[0, 1]`` (default 0.25 as the circle-loss paper; PML 0.4).
        gamma: Scale ``γ > 0`` (default 256 as the paper; PML 80; the public code 1).
        aggregate: ``"per_anchor"`` or ``"global"``.
        pair_weights: Positive-pair weights ``w_ij >= 0`` multiplying ``γ`` in the positive term
            only: a dense ``(N, M)`` tensor, or a factorised pair ``(row (N,), col (M,))`` meaning
            ``w_ij = row_i · col_j`` (nothing ``(N, M)`` is stored). Detached.
        detach_alpha: Treat ``α`` as constants (True) or differentiate it too (False).
        weights: ``(N,)`` non-negative per-anchor weights (``per_anchor`` only).
        reduction: ``"mean"`` (weighted mean over the anchors with a positive and a negative),
            ``"sum"`` (weighted sum) or ``"none"`` (``(N,)`` weighted per-anchor losses, 0 for
            anchors without a positive or a negative; ``per_anchor`` only). With ``"global"``
            ``"mean"`` and ``"sum"`` both give the single scalar.
        chunk_size: Columns per streamed block (``>= 1``); giving it forces streaming.

    Returns:
        A scalar, or ``(N,)`` with ``reduction="none"``; 0 (attached to the graph) when no anchor
        has both a positive and a negative. Float64 inputs give float64, others float32.

    Raises:
        ValueError: On mismatched shapes, non-finite or all-zero embedding rows, ``ref_emb``
            without ``ref_labels``, neither ``labels`` nor ``indices_tuple``, out-of-range
            indices, ``margin`` outside ``[0, 1]``, ``gamma <= 0``, an unknown ``aggregate`` or
            ``reduction``, or ``reduction="none"`` / ``weights`` with ``aggregate="global"``.

    Examples:
        >>> import torch
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> circle_loss(emb, y, margin=0.25, gamma=4.0)
        tensor(1.2581)
        >>> circle_loss(emb, y, margin=0.25, gamma=4.0, aggregate="global")
        tensor(2.4582)

    Reference:
        Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization", CVPR
        2020; Fang et al., "Deep metric learning with mirror attention and fine triplet loss for
        fundus image retrieval in ophthalmology", Biomedical Signal Processing and Control 80, 2023.
    """
    margin = check_margin(margin)
    gamma = check_positive("gamma", gamma)
    aggregate = check_choice("aggregate", aggregate, AGGREGATES)
    reduction = check_reduction(reduction)
    if aggregate == "global" and reduction == "none":
        raise ValueError(
            "reduction='none' needs aggregate='per_anchor': aggregate='global' is one log over all pairs, "
            "it has no per-anchor losses"
        )
    if aggregate == "global" and weights is not None:
        raise ValueError("weights (per-anchor) need aggregate='per_anchor': aggregate='global' has no anchors to weigh")
    pos, neg, zero = circle_row_terms(
        embeddings,
        labels,
        indices_tuple,
        ref_emb,
        ref_labels,
        margin=margin,
        gamma=gamma,
        aggregate=aggregate,
        pair_weights=pair_weights,
        detach_alpha=detach_alpha,
        chunk_size=chunk_size,
    )
    if aggregate == "global":  # every row's log-sum-exp combined: one LSE over all pairs
        return circle_global(pos, neg, zero)
    losses, counted = circle_per_anchor(pos, neg, zero)
    anchor_w = counted.to(losses.dtype)
    if weights is not None:
        check_weights("weights", weights, losses.shape[0])
        anchor_w = weights.detach().to(losses.dtype) * anchor_w
    return weighted_reduce(losses, anchor_w, reduction)
