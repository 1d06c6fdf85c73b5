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

from qualcl._validation import check_embeddings, check_feature_map, check_int, check_positive

__all__ = [
    "assignment_entropy",
    "grid_items",
    "mixup_consistency",
    "mixup_targets",
    "patch_discrimination",
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


def _auto_block(n: int, device: torch.device) -> int:
    if device.type == "cpu":
        return min(n, CPU_BLOCK)
    return n if n * n <= DENSE_ENTRIES else max(1, DENSE_ENTRIES // n)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _blocks(n: int, block: int) -> range:
    return range(0, n, block)


def _logits_block(x: Tensor, start: int, stop: int, temperature: float) -> Tensor:
    """``x · x[start:stop]ᵀ / T`` with each anchor's own column set to ``−inf``."""
    s = x @ x[start:stop].T / temperature
    rows = torch.arange(start, stop, device=x.device)
    s[rows, rows - start] = -math.inf
    return s


def _row_terms(x: Tensor, temperature: float, block: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row: ``log Z``, ``log P_{i'}``, ``Σ_J log(1 − P_j)``, ``A = Σ_J P_j / (1 − P_j)``."""
    n = x.shape[0]
    half = n // 2
    partner = (torch.arange(n, device=x.device) + half) % n
    log_z = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
    for start in _blocks(n, block):
        log_z = torch.logaddexp(log_z, torch.logsumexp(_logits_block(x, start, min(start + block, n), temperature), 1))
    cap = 1.0 - torch.finfo(x.dtype).eps
    log_pos = (x * x[partner]).sum(1) / temperature - log_z
    log_neg = torch.zeros_like(log_z)
    spread = torch.zeros_like(log_z)
    for start in _blocks(n, block):
        stop = min(start + block, n)
        p = (_logits_block(x, start, stop, temperature) - log_z[:, None]).exp()
        cols = torch.arange(start, stop, device=x.device)
        p = p.masked_fill(cols[None, :] == partner[:, None], 0.0).clamp(max=cap)  # J: neither i (p = 0) nor i'
        log_neg = log_neg + torch.log1p(-p).sum(1)
        spread = spread + (p / (1 - p)).sum(1)
    return log_z, log_pos, log_neg, spread


class _PatchDiscrimination(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, temperature: float, block: int) -> Tensor:
        c = x.detach()
        log_z, log_pos, log_neg, spread = _row_terms(c, temperature, block)
        ctx.save_for_backward(c, log_z, spread)
        ctx.temperature, ctx.block = temperature, block
        return -(log_pos + log_neg).mean()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None]:
        c, log_z, spread = ctx.saved_tensors
        temperature, block = ctx.temperature, ctx.block
        n = c.shape[0]
        partner = (torch.arange(n, device=c.device) + n // 2) % n
        cap = 1.0 - torch.finfo(c.dtype).eps
        grad = torch.zeros_like(c)
        # dℓ_i/ds_ik = P_k (1 − A_i) + [k ∈ J] P_k / (1 − P_k) − [k = i'], with s_ik = f_i·c_k / T
        for start in _blocks(n, block):
            stop = min(start + block, n)
            p = (_logits_block(c, start, stop, temperature) - log_z[:, None]).exp()
            cols = torch.arange(start, stop, device=c.device)
            is_partner = cols[None, :] == partner[:, None]
            in_j = p.masked_fill(is_partner, 0.0).clamp(max=cap)
            g = p * (1 - spread[:, None]) + in_j / (1 - in_j) - is_partner.to(p.dtype)
            grad = grad + g @ c[start:stop]
        return grad * (grad_out / (n * temperature)), None, None


def patch_discrimination(features: Tensor, *, temperature: float = 0.1, block_size: int | None = None) -> Tensor:
    r"""The instance-spreading criterion of local discrimination over ``N = 2n`` items, positives ``i ↔ i + n``.

    With unit vectors ``f``, ``s_{ik} = f_i·f_k / T``, ``Z_i = Σ_{k≠i} e^{s_{ik}}`` (the positive
    included), ``P_{k|i} = e^{s_{ik}} / Z_i`` and ``i'`` the positive of ``i``:

    .. math::
        L = -\frac{1}{N} \sum_{i=1}^{N} \Big[ \log P_{i'|i} + \sum_{j \notin \{i, i'\}} \log\big(1 - P_{j|i}\big) \Big]

    Gradients flow through the anchor row only: ``f_{i'}`` and the ``f_k`` of the similarity
    columns are constants (detached), as in the code. ``features`` are L2-normalised here (the
    normalisation is differentiated). ``1 − P`` is kept at least the dtype's epsilon, so a
    duplicate that takes all of a row's mass gives a large finite loss instead of ``inf``.

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
    temperature = check_positive("temperature", temperature)
    block = _auto_block(n, features.device) if block_size is None else check_int("block_size", block_size)
    x = F.normalize(features.to(_compute_dtype(features)), dim=1)
    loss: Tensor = _PatchDiscrimination.apply(x, temperature, min(block, n))
    return loss


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


def _check_pair(embeddings: Tensor, assignments: Tensor) -> None:
    check_feature_map("embeddings", embeddings)
    check_feature_map("assignments", assignments)
    n, _, h, w = embeddings.shape
    if assignments.shape[0] != n or assignments.shape[2:] != (h, w):
        raise ValueError(
            f"assignments must be (N, K, H, W) = ({n}, K, {h}, {w}) to match embeddings, got {tuple(assignments.shape)}"
        )


def region_features(embeddings: Tensor, assignments: Tensor) -> Tensor:
    r"""Region features ``r_{n,k} = normalize(mean_p a_{n,k}(p)·e_n(p))``.

    Args:
        embeddings: ``(N, D, H, W)`` pixel embeddings (L2-normalised per pixel here).
        assignments: ``(N, K, H, W)`` soft cluster assignments.

    Returns:
        ``(N, K, D)`` unit vectors.

    Examples:
        >>> import torch
        >>> region_features(torch.randn(2, 4, 8, 8), torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 3, 4])
    """
    _check_pair(embeddings, assignments)
    e = F.normalize(embeddings, dim=1)
    pooled = torch.einsum("nkhw,ndhw->nkd", assignments.to(e.dtype), e) / (e.shape[2] * e.shape[3])
    return F.normalize(pooled, dim=2)


def region_discrimination(embeddings: Tensor, assignments: Tensor, *, temperature: float = 0.2) -> Tensor:
    r"""Region discrimination: each region feature is classified to its own cluster's batch prototype.

    With region features ``r_{n,k}`` (:func:`region_features`) and prototypes
    ``c_k = normalize(mean_n r_{n,k})`` (not detached, the anchor's own region included, as in the
    code):

    .. math::
        L = -\frac{1}{NK} \sum_{n=1}^{N} \sum_{k=1}^{K}
            \log \frac{e^{r_{n,k}·c_k / T}}{\sum_{j=1}^{K} e^{r_{n,k}·c_j / T}}

    Args:
        embeddings: ``(N, D, H, W)`` pixel embeddings.
        assignments: ``(N, K, H, W)`` soft assignments, ``K >= 2``.
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
    temperature = check_positive("temperature", temperature)
    _check_pair(embeddings, assignments)
    if assignments.shape[1] < 2:
        raise ValueError(f"region discrimination needs K >= 2 clusters, got {assignments.shape[1]}")
    dtype = _compute_dtype(embeddings)
    r = region_features(embeddings.to(dtype), assignments.to(dtype))
    prototypes = F.normalize(r.mean(dim=0), dim=1)
    logits = torch.einsum("nkd,jd->nkj", r, prototypes) / temperature
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
