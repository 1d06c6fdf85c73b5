r"""Local discrimination's objectives: patch discrimination, mixup consistency, region discrimination, entropy.

Patch discrimination is the "invariant and spreading" instance criterion of Ye et al. (CVPR 2019)
as the local-discrimination code uses it (``BatchCriterion(negM=1, T)``): over ``N = 2n`` unit
vectors, item ``i``'s positive is ``i' = i ± n`` (the same grid cell of the other view), every other
item is a negative, and gradients flow only through the anchor row (the code reads its partners
and the columns of the similarity matrix through ``.data``). The loss of row ``i`` depends only on
``f_i`` and on constants, so it streams over column blocks with an exact hand-written backward:
peak memory ``O(N·b)`` for blocks of ``b`` columns instead of the dense ``N × N`` (and, on CPU,
faster than the dense matrix: see ``benchmarks/results/patch_discrimination_cpu.md``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import (
    check_embeddings,
    check_feature_map,
    check_finite,
    check_float_tensor,
    check_int,
    check_positive,
)

__all__ = [
    "REGION_EPS",
    "assignment_entropy",
    "grid_items",
    "mixup_consistency",
    "mixup_targets",
    "patch_discrimination",
    "patch_discrimination_rows",
    "patch_grid",
    "region_discrimination",
    "region_features",
]

#: On accelerators: dense similarity matrices up to this many entries (64 MiB in float32), column blocks beyond.
DENSE_ENTRIES = 1 << 24
#: On CPU: columns per block. The criterion's element-wise passes are memory-bound, and blocks that
#: stay in cache ran 3x faster than the dense matrix at N = 16,384 on 2 cores
#: (``benchmarks/results/patch_discrimination_cpu.md``).
CPU_BLOCK = 256


def _auto_block(rows: int, columns: int, device: torch.device) -> int:
    if device.type == "cpu":
        return min(columns, CPU_BLOCK)
    return columns if rows * columns <= DENSE_ENTRIES else max(1, DENSE_ENTRIES // rows)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _blocks(n: int, block: int) -> range:
    return range(0, n, block)


def _logits_block(x: Tensor, columns: Tensor, own: Tensor, start: int, stop: int, temperature: float) -> Tensor:
    """``x · columns[start:stop]ᵀ / T`` with each anchor's own column (when in the block) set to ``−inf``."""
    s = x @ columns[start:stop].T / temperature
    index = (own - start).clamp(0, stop - start - 1).unsqueeze(1)
    inside = ((own >= start) & (own < stop)).unsqueeze(1)
    return s.scatter_(1, index, torch.where(inside, -math.inf, s.gather(1, index)))


def _row_terms(
    x: Tensor, columns: Tensor, own: Tensor, partner: Tensor, temperature: float, block: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row: ``log Z``, ``log P_{i'}``, ``Σ_J log(1 − P_j)``, ``A = Σ_J P_j / (1 − P_j)``."""
    n = columns.shape[0]
    log_z = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
    for start in _blocks(n, block):
        stop = min(start + block, n)
        log_z = torch.logaddexp(log_z, torch.logsumexp(_logits_block(x, columns, own, start, stop, temperature), 1))
    cap = 1.0 - torch.finfo(x.dtype).eps
    log_pos = (x * columns[partner]).sum(1) / temperature - log_z
    log_neg = torch.zeros_like(log_z)
    spread = torch.zeros_like(log_z)
    for start in _blocks(n, block):
        stop = min(start + block, n)
        p = (_logits_block(x, columns, own, start, stop, temperature) - log_z[:, None]).exp()
        cols = torch.arange(start, stop, device=x.device)
        p = p.masked_fill(cols[None, :] == partner[:, None], 0.0).clamp(max=cap)  # J: neither i (p = 0) nor i'
        log_neg = log_neg + torch.log1p(-p).sum(1)
        spread = spread + (p / (1 - p)).sum(1)
    return log_z, log_pos, log_neg, spread


class _PatchDiscrimination(torch.autograd.Function):
    """Per-row criterion of anchors ``x`` ``(R, D)`` against constant ``columns`` ``(C, D)``; exact backward."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, columns: Tensor, own: Tensor, partner: Tensor, temperature: float, block: int
    ) -> Tensor:
        c = x.detach()
        log_z, log_pos, log_neg, spread = _row_terms(c, columns, own, partner, temperature, block)
        ctx.save_for_backward(c, columns, own, partner, log_z, spread)
        ctx.temperature, ctx.block = temperature, block
        return -(log_pos + log_neg)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None, None, None]:
        x, columns, own, partner, log_z, spread = ctx.saved_tensors
        temperature, block = ctx.temperature, ctx.block
        n = columns.shape[0]
        cap = 1.0 - torch.finfo(x.dtype).eps
        grad = torch.zeros_like(x)
        # dℓ_i/ds_ik = P_k (1 − A_i) + [k ∈ J] P_k / (1 − P_k) − [k = i'], with s_ik = f_i·c_k / T
        for start in _blocks(n, block):
            stop = min(start + block, n)
            p = (_logits_block(x, columns, own, start, stop, temperature) - log_z[:, None]).exp()
            cols = torch.arange(start, stop, device=x.device)
            is_partner = cols[None, :] == partner[:, None]
            in_j = p.masked_fill(is_partner, 0.0).clamp(max=cap)
            g = p * (1 - spread[:, None]) + in_j / (1 - in_j) - is_partner.to(p.dtype)
            grad = grad + g @ columns[start:stop]
        return grad * (grad_out[:, None] / temperature), None, None, None, None, None


def _check_columns(name: str, index: Any, rows: int, columns: int) -> Tensor:
    if not isinstance(index, Tensor) or index.dtype != torch.long or tuple(index.shape) != (rows,):
        got = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, Tensor) else type(index).__name__
        raise ValueError(f"{name} must be a ({rows},) long tensor of column indices, got {got}")
    if bool(((index < 0) | (index >= columns)).any()):
        raise ValueError(f"{name} must index the {columns} columns (0 <= {name} < {columns}), got {index.tolist()}")
    return index


def patch_discrimination_rows(
    anchors: Tensor,
    columns: Tensor,
    own: Tensor,
    partner: Tensor,
    *,
    temperature: float = 0.1,
    block_size: int | None = None,
) -> Tensor:
    r"""Per-anchor losses of the instance-spreading criterion, anchors against a set of constant columns.

    With unit vectors (both inputs are L2-normalised here), ``s_{ik} = a_i·c_k / T``,
    ``Z_i = Σ_{k ≠ own_i} e^{s_{ik}}`` (the positive included), ``P_{k|i} = e^{s_{ik}} / Z_i``:

    .. math::
        \ell_i = -\Big[ \log P_{\mathrm{partner}_i|i} + \sum_{j \notin \{\mathrm{own}_i, \mathrm{partner}_i\}}
                 \log\big(1 - P_{j|i}\big) \Big]

    Gradients flow through ``anchors`` only (``columns`` are constants, as the code reads them
    through ``.data``). :func:`patch_discrimination` is this with ``anchors = columns = features``;
    under DDP the anchors are a rank's rows and the columns every rank's items, ``own`` and
    ``partner`` shifted by the rank's offset (:class:`qualcl.losses.PatchDiscriminationLoss`).
    Streams over column blocks with an exact backward, as :func:`patch_discrimination`.

    Args:
        anchors: ``(R, D)`` anchor rows (differentiated).
        columns: ``(C, D)`` every item (detached here).
        own: ``(R,)`` long: the column of each anchor itself (left out of ``Z``).
        partner: ``(R,)`` long: the column of each anchor's positive (``!= own``).
        temperature: ``T > 0``.
        block_size: Columns per block; ``None`` as :func:`patch_discrimination`.

    Returns:
        ``(R,)`` per-anchor losses (float32 for half inputs, float64 for float64).

    Examples:
        >>> import torch
        >>> f = torch.randn(6, 4)
        >>> rows = patch_discrimination_rows(f[:2], f, torch.tensor([0, 1]), torch.tensor([3, 4]))
        >>> rows.shape
        torch.Size([2])

    Reference:
        Ye et al., "Unsupervised Embedding Learning via Invariant and Spreading Instance Feature",
        CVPR 2019; Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023
        (``BatchAverage.py::BatchCriterion``).
    """
    check_embeddings("anchors", anchors, nonzero=True)
    check_embeddings("columns", columns, dim=anchors.shape[1], nonzero=True)
    r, c = anchors.shape[0], columns.shape[0]
    own = _check_columns("own", own, r, c)
    partner = _check_columns("partner", partner, r, c)
    if bool((own == partner).any()):
        raise ValueError("partner must differ from own in every row (an anchor is not its own positive)")
    temperature = check_positive("temperature", temperature)
    block = _auto_block(r, c, anchors.device) if block_size is None else check_int("block_size", block_size)
    dtype = _compute_dtype(anchors)
    x = F.normalize(anchors.to(dtype), dim=1)
    cols = x.detach() if columns is anchors else F.normalize(columns.detach().to(dtype), dim=1)
    losses: Tensor = _PatchDiscrimination.apply(x, cols, own, partner, temperature, min(block, c))
    return losses


def patch_discrimination(features: Tensor, *, temperature: float = 0.1, block_size: int | None = None) -> Tensor:
    r"""The instance-spreading criterion of local discrimination over ``N = 2n`` items, positives ``i ↔ i + n``.

    With unit vectors ``f``, ``s_{ik} = f_i·f_k / T``, ``Z_i = Σ_{k≠i} e^{s_{ik}}`` (the positive
    included), ``P_{k|i} = e^{s_{ik}} / Z_i`` and ``i'`` the positive of ``i``:

    .. math::
        L = -\frac{1}{N} \sum_{i=1}^{N} \Big[ \log P_{i'|i} + \sum_{j \notin \{i, i'\}} \log\big(1 - P_{j|i}\big) \Big]

    Gradients flow through the anchor row only: ``f_{i'}`` and the ``f_k`` of the similarity
    columns are constants (detached), as in the code. ``features`` are L2-normalised here (the
    normalisation is differentiated). ``1 − P`` is kept at least the dtype's epsilon, so a
    duplicate that takes all of a row's mass gives a large finite loss instead of ``inf``. The
    mean of :func:`patch_discrimination_rows` with ``anchors = columns = features``.

    Args:
        features: ``(N, D)`` with ``N = 2n`` even: the first ``n`` items are the first view, the
            last ``n`` the same items in the second view (e.g. :func:`grid_items` of
            ``[x1_1, x2_1, x1_2, x2_2]``'s patch grids).
        temperature: ``T > 0`` (0.1 in the paper).
        block_size: Columns per block; ``None``: 256 on CPU (cache-sized blocks are the fastest
            there), else dense up to ``2^24`` entries and ``2^24 // N`` columns beyond. Every block
            size gives the same value and gradients.

    Returns:
        Scalar loss (computed in float32 for half inputs, float64 for float64).

    Examples:
        >>> import torch
        >>> f = torch.randn(8, 4)
        >>> loss = patch_discrimination(torch.cat([f, f]))  # each item's positive is itself
        >>> bool(loss > 0), patch_discrimination(torch.cat([f, f]), block_size=3).allclose(loss)
        (True, True)

    Reference:
        Ye et al., "Unsupervised Embedding Learning via Invariant and Spreading Instance Feature",
        CVPR 2019; Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023
        (``BatchAverage.py::BatchCriterion``).
    """
    check_embeddings("features", features, nonzero=True)
    n = features.shape[0]
    if n % 2:
        raise ValueError(f"features needs an even number of rows N = 2n (item i's positive is i + n), got {n}")
    index = torch.arange(n, device=features.device)
    rows = patch_discrimination_rows(
        features, features, index, (index + n // 2) % n, temperature=temperature, block_size=block_size
    )
    return rows.mean()


def mixup_targets(first: Tensor, second: Tensor, weights: Tensor) -> Tensor:
    r"""Detached targets of the mixup images: ``normalize(w·f(x_1) + (1 − w)·f(x_2))`` per cell.

    Args:
        first: ``(B, D, h, w)`` patch grids of the first images (unit vectors per cell).
        second: ``(B, D, h, w)`` patch grids of the second images.
        weights: ``(B,)`` mixing weights ``w`` of the first images.

    Returns:
        ``(B, D, h, w)`` unit targets, detached.

    Examples:
        >>> import torch
        >>> a, b = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
        >>> mixup_targets(a, b, torch.tensor([0.3, 0.7])).requires_grad
        False
    """
    check_feature_map("first", first)
    check_feature_map("second", second, channels=first.shape[1])
    if first.shape != second.shape:
        raise ValueError(
            f"first and second must have the same shape, got {tuple(first.shape)} and {tuple(second.shape)}"
        )
    if not isinstance(weights, Tensor) or weights.shape != (first.shape[0],):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a ({first.shape[0]},) tensor, got {shape}")
    check_float_tensor("weights", weights)
    check_finite("weights", weights)
    if bool(((weights < 0) | (weights > 1)).any()):
        raise ValueError(
            f"weights are mixing weights and must lie in [0, 1], got min {float(weights.min())}, "
            f"max {float(weights.max())}"
        )
    w = weights.detach().to(first.dtype).view(-1, 1, 1, 1)
    return F.normalize(w * first.detach() + (1 - w) * second.detach(), dim=1)


def mixup_consistency(
    mixed: Tensor, targets: Tensor, *, temperature: float = 0.1, block_size: int | None = None
) -> Tensor:
    r"""Mixup consistency: :func:`patch_discrimination` of ``[mixed; targets]`` with the targets detached.

    Item ``i`` of ``mixed`` (a cell of a mixup image) has the target of the same cell as its
    positive; every other mixed cell and target is a negative. The targets' own rows enter the
    value (as in the code) but carry no gradient.

    Args:
        mixed: ``(M, D)`` features of the mixup images' cells.
        targets: ``(M, D)`` their targets (:func:`mixup_targets`, flattened by :func:`grid_items`).
        temperature: ``T > 0``.
        block_size: As :func:`patch_discrimination`.

    Returns:
        Scalar loss.

    Examples:
        >>> import torch
        >>> mixed = torch.randn(6, 4, requires_grad=True)
        >>> mixup_consistency(mixed, torch.randn(6, 4)).backward()
        >>> mixed.grad.shape
        torch.Size([6, 4])
    """
    check_embeddings("mixed", mixed, nonzero=True)
    check_embeddings("targets", targets, dim=mixed.shape[1], nonzero=True)
    if mixed.shape[0] != targets.shape[0]:
        raise ValueError(f"mixed and targets need the same number of rows, got {mixed.shape[0]} and {targets.shape[0]}")
    return patch_discrimination(
        torch.cat([mixed, targets.detach().to(mixed.dtype)]), temperature=temperature, block_size=block_size
    )


def patch_grid(embeddings: Tensor, size: int | tuple[int, int] = 8) -> Tensor:
    """Patch features: the embedding map average-pooled to a ``size`` grid, each cell L2-normalised.

    Args:
        embeddings: ``(N, D, H, W)``.
        size: Grid size (8 in the paper, each cell 56 × 56 px of a 448 image).

    Returns:
        ``(N, D, h, w)``.

    Examples:
        >>> import torch
        >>> patch_grid(torch.randn(2, 4, 16, 16), size=4).shape
        torch.Size([2, 4, 4, 4])
    """
    check_feature_map("embeddings", embeddings)
    return F.normalize(F.adaptive_avg_pool2d(embeddings, size), dim=1)


def grid_items(grid: Tensor) -> Tensor:
    """``(N, D, h, w)`` → ``(N·h·w, D)``, image-major then row-major cells (the code's ``permute + reshape``).

    Examples:
        >>> import torch
        >>> grid_items(torch.zeros(2, 4, 3, 3)).shape
        torch.Size([18, 4])
    """
    check_feature_map("grid", grid)
    return grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[1])


#: The norm below which the normalisations of region discrimination (of each pixel embedding, each
#: pooled region and each prototype) stop scaling to unit length: they divide by ``max(‖v‖, ε)``
#: (``F.normalize``'s ``eps``). A pooled region's norm is at most its cluster's mean assignment
#: mass and a prototype's at most 1, so ``ε = 10⁻³`` shortens only a region holding less than 0.1 %
#: of an image's mass (or a prototype whose regions cancel), and keeps every gradient below about
#: ``1/ε`` (``1/ε²`` for a cluster empty in every image) times the incoming one: torch's default
#: ``10⁻¹²`` gave gradients of ``10¹⁰``-``10¹¹`` for an all-zero pixel or an unused cluster. Pixel
#: embeddings are expected at unit scale (the local-discrimination head's are unit vectors).
REGION_EPS = 1e-3


def _check_assignments(assignments: Tensor) -> None:
    """Soft assignments: in ``[0, 1]`` and summing to 1 over dim 1, within a tolerance."""
    tolerance = max(1e-3, 4 * torch.finfo(assignments.dtype).eps)
    a = assignments.detach()
    low, high = float(a.min()), float(a.max())
    if low < -tolerance or high > 1 + tolerance:
        raise ValueError(
            f"assignments must be soft cluster assignments in [0, 1], got values from {low:.4g} to {high:.4g} "
            "(were embeddings and assignments swapped?)"
        )
    sums = a.sum(dim=1, dtype=_compute_dtype(a))
    worst = float((sums - 1).abs().max())
    if worst > tolerance:
        raise ValueError(
            f"assignments must sum to 1 over the K clusters (dim 1) at every pixel (tolerance {tolerance:g}), "
            f"got sums from {float(sums.min()):.4g} to {float(sums.max()):.4g} "
            "(were embeddings and assignments swapped, or are they unnormalised scores?)"
        )


def _check_pair(embeddings: Tensor, assignments: Tensor) -> None:
    check_feature_map("embeddings", embeddings)
    check_feature_map("assignments", assignments)
    n, _, h, w = embeddings.shape
    if assignments.shape[0] != n or assignments.shape[2:] != (h, w):
        raise ValueError(
            f"assignments must be (N, K, H, W) = ({n}, K, {h}, {w}) to match embeddings, got {tuple(assignments.shape)}"
        )
    _check_assignments(assignments)


def region_features(embeddings: Tensor, assignments: Tensor) -> Tensor:
    r"""Region features ``r_{n,k} = normalize(mean_p a_{n,k}(p)·e_n(p))``.

    Both normalisations (of each pixel and of each pooled region) divide by
    ``max(‖v‖, ε)`` with ``ε =`` :data:`REGION_EPS`: an all-zero pixel contributes nothing and a
    region without assignment mass gets a short (not a unit) feature, with bounded gradients.

    Args:
        embeddings: ``(N, D, H, W)`` pixel embeddings (L2-normalised per pixel here).
        assignments: ``(N, K, H, W)`` soft cluster assignments: in ``[0, 1]``, summing to 1 over
            ``K`` at every pixel (within ``1e-3``; refused otherwise, naming ``assignments``).

    Returns:
        ``(N, K, D)`` unit vectors (shorter only for regions whose pooled vector is below ``ε``).

    Examples:
        >>> import torch
        >>> a = torch.softmax(torch.randn(2, 3, 8, 8), dim=1)
        >>> region_features(torch.randn(2, 4, 8, 8), a).shape
        torch.Size([2, 3, 4])
    """
    _check_pair(embeddings, assignments)
    return _region_features(embeddings, assignments)


def _region_features(embeddings: Tensor, assignments: Tensor) -> Tensor:
    e = F.normalize(embeddings, dim=1, eps=REGION_EPS)
    pooled = torch.einsum("nkhw,ndhw->nkd", assignments.to(e.dtype), e) / (e.shape[2] * e.shape[3])
    return F.normalize(pooled, dim=2, eps=REGION_EPS)


def _region_inputs(embeddings: Tensor, assignments: Tensor, temperature: float) -> tuple[Tensor, float]:
    """Checked inputs → region features ``(N, K, D)`` in the compute dtype, and the checked temperature."""
    temperature = check_positive("temperature", temperature)
    _check_pair(embeddings, assignments)
    if assignments.shape[1] < 2:
        raise ValueError(f"region discrimination needs K >= 2 clusters, got {assignments.shape[1]}")
    dtype = _compute_dtype(embeddings)
    return _region_features(embeddings.to(dtype), assignments.to(dtype)), temperature


def _region_logits(regions: Tensor, every_region: Tensor, temperature: float) -> Tensor:
    """``(N, K, K)`` logits of local ``regions`` against the prototypes of ``every_region`` ``(M, K, D)``."""
    prototypes = F.normalize(every_region.mean(dim=0), dim=1, eps=REGION_EPS)
    return torch.einsum("nkd,jd->nkj", regions, prototypes) / temperature


def region_discrimination(embeddings: Tensor, assignments: Tensor, *, temperature: float = 0.2) -> Tensor:
    r"""Region discrimination: each region feature is classified to its own cluster's batch prototype.

    With region features ``r_{n,k}`` (:func:`region_features`) and prototypes
    ``c_k = normalize(mean_n r_{n,k})`` (not detached, the anchor's own region included, as in the
    code):

    .. math::
        L = -\frac{1}{NK} \sum_{n=1}^{N} \sum_{k=1}^{K}
            \log \frac{e^{r_{n,k}·c_k / T}}{\sum_{j=1}^{K} e^{r_{n,k}·c_j / T}}

    Every normalisation divides by ``max(‖v‖, ε)``, ``ε =`` :data:`REGION_EPS` (the code uses
    torch's ``1e-12``): the same value whenever no pixel, region or prototype is shorter than
    ``ε``, and bounded gradients for an all-zero pixel or a cluster without assignment mass.

    Args:
        embeddings: ``(N, D, H, W)`` pixel embeddings.
        assignments: ``(N, K, H, W)`` soft assignments, ``K >= 2``, in ``[0, 1]`` and summing to 1
            over ``K`` at every pixel (within ``1e-3``): unnormalised scores, or the two arguments
            swapped, are refused naming ``assignments``.
        temperature: ``T > 0`` (0.2 in the paper).

    Returns:
        Scalar loss, ``log K`` when every region is the same vector.

    Examples:
        >>> import torch
        >>> e = torch.randn(2, 8, 6, 6)
        >>> a = torch.softmax(torch.randn(2, 4, 6, 6), dim=1)
        >>> region_discrimination(e, a).shape
        torch.Size([])

    Reference:
        Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023
        (``step2_train_ld.py::compute_clustering_loss``).
    """
    r, temperature = _region_inputs(embeddings, assignments, temperature)
    logits = _region_logits(r, r, temperature)
    k = r.shape[1]
    target = torch.arange(k, device=r.device).expand(r.shape[0], k)
    return F.cross_entropy(logits.reshape(-1, k), target.reshape(-1))


def assignment_entropy(assignments: Tensor) -> Tensor:
    r"""Mean binary entropy (bits) of soft assignments, over pixels, clusters and images.

    .. math::
        H = \operatorname{mean}_{n,k,p} \big[ -a \log_2 a - (1 - a) \log_2 (1 - a) \big], \quad a = a_{n,k}(p)

    Minimising it pushes each assignment towards 0 or 1. As in the code, the logarithms see
    ``a + ε`` and ``1 − a + ε`` with ``ε = 10⁻³⁰``, so ``a ∈ {0, 1}`` has a finite value and
    gradient; computed in float32 for half inputs (where ``ε`` would underflow).

    Args:
        assignments: ``(N, K, H, W)`` values in ``[0, 1]``.

    Returns:
        Scalar in ``[0, 1]``.

    Examples:
        >>> import torch
        >>> assignment_entropy(torch.full((1, 2, 2, 2), 0.5))
        tensor(1.)
    """
    check_feature_map("assignments", assignments)
    if bool((assignments < 0).any()) or bool((assignments > 1).any()):
        raise ValueError("assignments must lie in [0, 1]")
    a = assignments.to(_compute_dtype(assignments))
    eps = 1e-30
    return (-a * torch.log2(a + eps) - (1 - a) * torch.log2(1 - a + eps)).mean()
