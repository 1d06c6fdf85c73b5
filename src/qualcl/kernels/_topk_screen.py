"""Exact top-K on CPU through a bfloat16 screen: a cheap matmul finds the candidates, float32 ranks them.

A bfloat16 matmul (native on CPUs with AVX512-BF16 or AMX: about 2.8 times the float32 throughput on
an AMD EPYC Zen 4) estimates every score within a proven bound; only the entries whose estimate is
close enough to the row's ``k``-th estimate can be in its exact top-``k`` (:class:`_Screen`). Those
few are scored again from the float32 rows and the exact top-``k`` of those scores is selected (ties:
lower column first), whatever the bfloat16 matmul rounded.

The bound (:func:`error_terms`). For float32 rows ``q`` and ``c`` (``‖c‖ <= C``), their bfloat16
roundings ``q'`` and ``c'`` (``u = 2^-8``: ``|c - c'| <= u |c|`` componentwise), products summed in
float32 (``γ_D = D · 2^-24 / (1 - D · 2^-24)``) and the sum rounded to bfloat16 (the estimate ``s̃``),
the re-scored value ``r`` (a float32 sum of float32 products) satisfies

    ``|s̃ - r| <= A + u' |s̃|``,  ``A = ‖q - q'‖ C + ‖q'‖ C (u + γ_D (1 + u)) + γ_{D+1} ‖q‖ C + D · 2^-125``

with ``u' = u / (1 - u)`` (the last term: products flushed to zero). If ``T̃`` is a row's ``k``-th
largest estimate, ``k`` entries have ``r >= T̃ - A - u'|T̃|``, so every entry of the exact top-``k``
(ties included) has ``s̃ + u'|s̃| >= T̃ - 2A - u'|T̃|``: :func:`_floor` solves that for ``s̃``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl.kernels._columns import CandidateFilter, drop_block_
from qualcl.kernels._rows import unit_rows
from qualcl.kernels._topk_torch import (
    _RowBlock,
    finish_topk,
    rank_bound,
    scatter_rows,
    select_topk,
    streaming_topk,
)

__all__ = ["bf16_matmul_is_native", "error_terms", "screen_pays", "screened_topk"]

U = 2.0**-8
"""bfloat16's unit roundoff (8 significant bits, round to nearest even)."""
U_OUT = U / (1 - U)
"""Relative bound on rounding a float32 sum to bfloat16, relative to the rounded value."""

SCREEN_MIN_WORK = 1 << 27
"""Multiply-adds (``N · M · D``) below which ``screen=None`` keeps the float32 matmul (small calls: the
screen's extra passes cost more than the matmul it saves)."""
SCREEN_MIN_COLUMNS_PER_K = 1024
"""``screen=None`` screens only when ``M >= 1024 k``: each row re-scores a few times ``k`` survivors
from gathered rows, which pays against the matmul's ``M`` columns only when ``k`` is a small share of
them (retrieval: k = 10 of 100,000 runs at 0.8× the float32 path; the K = 64 miner of 8,192 at 3×)."""
SURVIVORS_PER_K = 16
"""A row may keep at most ``16 k + 512`` survivors; beyond, the screen is not selective (near-duplicate
or collapsed embeddings: every estimate within the bound of the ``k``-th) and the call falls back to the
float32 path, having spent one flush of bfloat16 blocks."""
RESCORE_ELEMENTS = 1 << 22
"""Gathered candidate elements (``survivors · D``) per re-scoring step."""


def bf16_matmul_is_native() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), so the screen pays."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private helpers: absent in some builds
        return False


def screen_pays(q: Tensor, n: int, m: int, d: int, k: int) -> bool:
    """The default of ``screen=None``: float32 queries on a CPU with native bfloat16, a large call, ``M >= 1024 k``."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.float32
        and n * m * d >= SCREEN_MIN_WORK
        and SCREEN_MIN_COLUMNS_PER_K * k <= m
        and bf16_matmul_is_native()
    )


def error_terms(q: Tensor, low: Tensor, candidate_norm: float) -> Tensor:
    """The per-row term ``A`` of the screen's bound (module docstring), widened by a relative ``2^-20``.

    Args:
        q: ``(N, D)`` float32 (signed) query rows.
        low: ``q`` rounded to bfloat16.
        candidate_norm: ``C``, at least the L2 norm of every candidate row.

    Returns:
        ``(N,)`` float64 bounds.

    Examples:
        >>> import torch
        >>> q = torch.nn.functional.normalize(torch.randn(4, 256), dim=1)
        >>> bool((error_terms(q, q.bfloat16(), 1.0) < 2 * 2.0**-8).all())
        True
    """
    d = q.shape[1]
    eps = 2.0**-24
    gamma, gamma1 = d * eps / (1 - d * eps), (d + 1) * eps / (1 - (d + 1) * eps)
    wide, rounded = q.double(), low.double()
    terms: Tensor = (
        torch.linalg.vector_norm(wide - rounded, dim=1) * candidate_norm
        + torch.linalg.vector_norm(rounded, dim=1) * (candidate_norm * (U + gamma * (1 + U)))
        + torch.linalg.vector_norm(wide, dim=1) * (candidate_norm * gamma1)
        + d * 2.0**-125
    )
    return terms.mul(1 + 2.0**-20)


class _Unselective(Exception):
    """A row kept more survivors than :data:`SURVIVORS_PER_K` allows."""


class _Screen(_RowBlock):
    """The candidates of ``R`` query rows while bfloat16 blocks stream past: every entry the bound cannot rule out.

    A :class:`qualcl.kernels._topk_torch._RowBlock` whose merge keeps every estimate at or above
    :func:`_floor` of the running ``k``-th estimate (not only ``k`` entries), and whose threshold is that
    floor: it only rises (the floor increases with the ``k``-th estimate, which only rises), and an
    entry below it is below the floor of the final ``k``-th estimate, so it is not in the exact top-``k``.
    State: float32 estimates and their columns, ``-inf`` / ``-1`` padded.
    """

    def __init__(self, rows: int, k: int, terms: Tensor, like: Tensor) -> None:
        super().__init__(rows, k, like)
        self.terms = terms  # (R,) float64: A of each row
        self.values = like.new_full((rows, 0), float("-inf"), dtype=torch.float32)
        self.indices = self.indices[:, :0]

    def first_threshold(self, levels: list[Tensor]) -> Tensor:
        return _floor(rank_bound(levels, self.k), self.terms)

    def limit(self) -> int:
        return SURVIVORS_PER_K * self.k + 512

    def check_pending(self) -> None:  # one block's candidates past the limit: give up before merging them
        if self.pending_count > self.values.shape[0] * self.limit():
            raise _Unselective

    def merge(self, values: Tensor, indices: Tensor) -> None:
        assert self.threshold is not None
        if values.shape[1] >= self.k:
            kth = torch.topk(values, self.k, dim=1, sorted=False).values.amin(dim=1)
            floor = torch.where(kth > float("-inf"), _floor(kth, self.terms), self.threshold)
            self.threshold = torch.maximum(self.threshold, floor)
        at, slot = torch.nonzero((values >= self.threshold[:, None]) & (values > float("-inf"))).unbind(1)
        self.values, self.indices = scatter_rows(at, indices[at, slot], values[at, slot], values.shape[0])
        if self.values.shape[1] > self.limit():
            raise _Unselective


def _floor(kth: Tensor, terms: Tensor) -> Tensor:
    """The lowest estimate that can belong to the exact top-``k`` of a row whose ``k``-th estimate is ``kth``.

    The ``s̃`` solving ``s̃ + u'|s̃| = kth - 2A - u'|kth|`` (module docstring), in float64, rounded
    down to float32: increasing in ``kth``, so a lower bound on ``kth`` gives a lower threshold.
    """
    t = kth.double()
    y = t - 2 * terms - U_OUT * t.abs()
    y = torch.where(y >= 0, y / (1 + U_OUT), y / (1 - U_OUT)).float()
    return torch.nextafter(y, y.new_tensor(float("-inf")))


def screened_topk(
    q: Tensor,
    c: Tensor,
    filt: CandidateFilter,
    k: int,
    *,
    largest: bool,
    rows: int,
    cols: int,
    normalize: bool,
    norms: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact per-row top-``k`` of ``±q @ ĉ.T`` over the kept columns, screened by a bfloat16 matmul.

    The candidates stream past ``cols`` at a time (converted to float32, normalised with ``normalize``,
    rounded to bfloat16); each block of ``rows`` queries keeps the entries at or above :func:`_floor` of
    its running ``k``-th estimate (:class:`_Screen`). The survivors are scored again from the float32
    rows (:func:`_rescore`) and the top-``k`` of those values is selected by (value descending, column
    ascending). Memory O(N · survivors + rows · cols + cols · D).

    Args:
        q: ``(N, D)`` float32 queries (normalised if wanted).
        c: ``(M, D)`` candidates, any floating dtype (a memory-mapped tensor is read chunk by chunk,
            then row by row for the survivors).
        filt: Columns each row may select.
        k: Entries per row, ``k <= M``.
        largest: Most (True) or least similar first.
        rows: Queries per block.
        cols: Candidates per chunk.
        normalize: L2-normalise the candidates.
        norms: ``(M,)`` float32 row norms of ``c`` (computed chunk by chunk as they stream past, when missing).

    Returns:
        ``(values (N, k), indices (N, k))``, padded with ``∓inf`` and ``-1`` like ``streaming_topk``.
        Scores whose bound nears float32's range, or rows the screen cannot narrow
        (:data:`SURVIVORS_PER_K`), take ``streaming_topk`` instead: the float32 path, the same exact top-``k``.
    """
    n, m = q.shape[0], c.shape[0]

    def fallback() -> tuple[Tensor, Tensor]:  # the float32 path, with the caller's arguments
        return streaming_topk(
            q, c, filt, k, largest=largest, scale=1.0, rows=rows, cols=cols, normalize=normalize, norms=given
        )

    given = norms
    if normalize and norms is None:  # filled chunk by chunk in the loop below: one read of the candidates
        norms = q.new_empty(m)

    def unit(index: slice | Tensor) -> Tensor:  # float32 rows of ĉ, the same bits however they are read
        x = c[index].to(q.dtype)
        return unit_rows(x, norms[index]) if normalize and norms is not None else x

    if normalize:
        candidate_norm = 1.0 + 2.0**-20  # unit rows, up to rounding
    else:
        candidate_norm = max(
            float(torch.linalg.vector_norm(unit(slice(c0, c0 + cols)), dim=1).max()) for c0 in range(0, m, cols)
        )
    signed = q if largest else -q
    low = signed.to(torch.bfloat16)
    terms = error_terms(signed, low, candidate_norm)
    if not bool((terms < 2.0**100).all()):  # scores near float32's range: bfloat16 could overflow
        return fallback()
    blocks = [(r0, min(r0 + rows, n)) for r0 in range(0, n, rows)]
    screens = [_Screen(r1 - r0, k, terms[r0:r1], q) for r0, r1 in blocks]
    buffer = low.new_empty(min(cols, m), q.shape[1])
    try:
        for c0 in range(0, m, cols):
            raw = c[c0 : c0 + cols].to(q.dtype)
            chunk = buffer[: raw.shape[0]]
            if norms is None or not normalize:
                chunk.copy_(raw)
            else:  # unit_rows and the bfloat16 rounding in one pass (computed in float32, rounded on store)
                if given is None:
                    norms[c0 : c0 + cols] = torch.linalg.vector_norm(raw, dim=1)
                divisors = norms[c0 : c0 + cols].clamp_min(1e-12)[:, None]
                torch.div(raw, divisors.expand_as(raw), out=chunk)
            for (r0, r1), found in zip(blocks, screens, strict=True):
                scores = torch.mm(low[r0:r1], chunk.T)
                drop_block_(scores, filt, r0, c0)
                found.add(scores, c0)
        for found in screens:
            found.flush()
    except _Unselective:
        return fallback()
    values = q.new_empty(n, k)
    indices = torch.empty(n, k, dtype=torch.long, device=q.device)
    for (r0, r1), found in zip(blocks, screens, strict=True):
        values[r0:r1], indices[r0:r1] = _rescore(signed[r0:r1], found.indices, unit, k)
    return finish_topk(values, indices, largest)


def _rescore(q: Tensor, columns: Tensor, unit: Callable[[Tensor], Tensor], k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` by exact float32 scores of the surviving ``columns`` (``(R, W)``, ``-1`` = none).

    Each survivor's score is ``(ĉ_j * q_i).sum()`` over its own product row: one reduction per pair,
    the same for equal inputs wherever they sit (equal candidates tie exactly).
    """
    if columns.shape[1] < k:
        columns = F.pad(columns, (0, k - columns.shape[1]), value=-1)
    d = q.shape[1]
    at, slot = torch.nonzero(columns >= 0).unbind(1)
    chosen = columns[at, slot]
    values = q.new_full(columns.shape, float("-inf"))
    step = max(1, RESCORE_ELEMENTS // d)
    for start in range(0, at.shape[0], step):
        part = slice(start, start + step)
        values[at[part], slot[part]] = (unit(chosen[part]) * q.index_select(0, at[part])).sum(dim=1)
    return select_topk(values, columns, k)
