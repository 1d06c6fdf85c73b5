"""Local discrimination's losses as modules: patch discrimination, mixup consistency, region discrimination."""

from __future__ import annotations

from torch import Tensor, nn

from qualcl._validation import check_int, check_positive
from qualcl.functional.local import mixup_consistency, patch_discrimination, region_discrimination

__all__ = ["MixupConsistencyLoss", "PatchDiscriminationLoss", "RegionDiscriminationLoss"]


class PatchDiscriminationLoss(nn.Module):
    r"""Patch discrimination (the invariant-and-spreading criterion) over ``N = 2n`` items, positives ``i ↔ i + n``.

    .. math::
        L = -\frac{1}{N} \sum_{i=1}^{N} \Big[ \log P_{i'|i} + \sum_{j \notin \{i, i'\}} \log\big(1 - P_{j|i}\big) \Big],
        \qquad P_{k|i} = \frac{e^{f_i·f_k / T}}{\sum_{l \ne i} e^{f_i·f_l / T}}

    over L2-normalised features; gradients flow through the anchor rows only (the partners and the
    similarity columns are detached, as in the local-discrimination code). The loss streams over
    column blocks with an exact backward (on CPU always, blocks of 256; on accelerators beyond
    ``2^24`` similarities), so ``256·B`` patch items never need the dense matrix
    (:func:`qualcl.functional.patch_discrimination`): at ``B = 64`` (16,384 items) on 2 CPU cores
    it used about 20× less memory than the code's dense criterion and ran 2.5× faster
    (``benchmarks/results/patch_discrimination_cpu.md``).

    Args:
        temperature: ``T > 0`` (0.1).
        block_size: Columns per block (``None``: 256 on CPU, else dense when small and blocks beyond).

    Shape:
        ``features``: ``(N, D)`` with ``N`` even (first view, then the same items in the second
        view); output: scalar.

    Examples:
        >>> import torch
        >>> from qualcl.functional import grid_items, patch_grid
        >>> grids = patch_grid(torch.randn(4, 32, 64, 64), size=8)  # [x1_1, x2_1, x1_2, x2_2] realigned
        >>> PatchDiscriminationLoss()(grid_items(grids)).shape
        torch.Size([])

    Reference:
        Ye et al., "Unsupervised Embedding Learning via Invariant and Spreading Instance Feature",
        CVPR 2019; Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023.
    """

    def __init__(self, temperature: float = 0.1, block_size: int | None = None) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.block_size = None if block_size is None else check_int("block_size", block_size)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"temperature={self.temperature}, block_size={self.block_size}"

    def forward(self, features: Tensor) -> Tensor:
        """The loss of ``features`` ``(N, D)``."""
        return patch_discrimination(features, temperature=self.temperature, block_size=self.block_size)


class MixupConsistencyLoss(PatchDiscriminationLoss):
    r"""Mixup consistency: each mixup cell's positive is its detached target ``normalize(w·f_1 + (1 − w)·f_2)``.

    The same criterion as :class:`PatchDiscriminationLoss` over ``[mixed; targets]``
    (:func:`qualcl.functional.mixup_consistency`); build the targets with
    :func:`qualcl.functional.mixup_targets`.

    Args:
        temperature: ``T > 0`` (0.1).
        block_size: Columns per block.

    Shape:
        ``mixed``, ``targets``: ``(M, D)``; output: scalar.

    Examples:
        >>> import torch
        >>> MixupConsistencyLoss()(torch.randn(8, 4), torch.randn(8, 4)).shape
        torch.Size([])

    Reference:
        Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023.
    """

    def forward(self, mixed: Tensor, targets: Tensor) -> Tensor:  # type: ignore[override]
        """The loss of the mixup cells ``(M, D)`` against their targets ``(M, D)``."""
        return mixup_consistency(mixed, targets, temperature=self.temperature, block_size=self.block_size)


class RegionDiscriminationLoss(nn.Module):
    r"""Region discrimination: cross-entropy of each region feature to its own cluster's batch prototype.

    .. math::
        L = -\frac{1}{NK} \sum_{n,k} \log \frac{e^{r_{n,k}·c_k / T}}{\sum_{j} e^{r_{n,k}·c_j / T}},
        \qquad r_{n,k} = \frac{\operatorname{mean}_p a_{n,k}(p) e_n(p)}{\lVert\cdot\rVert},
        \quad c_k = \frac{\operatorname{mean}_n r_{n,k}}{\lVert\cdot\rVert}

    Prototypes are not detached (as in the code). See
    :func:`qualcl.functional.region_discrimination`.

    Args:
        temperature: ``T > 0`` (0.2).

    Shape:
        ``embeddings``: ``(N, D, H, W)``; ``assignments``: ``(N, K, H, W)``; output: scalar.

    Examples:
        >>> import torch
        >>> e, a = torch.randn(2, 8, 6, 6), torch.softmax(torch.randn(2, 4, 6, 6), dim=1)
        >>> RegionDiscriminationLoss()(e, a).shape
        torch.Size([])

    Reference:
        Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"temperature={self.temperature}"

    def forward(self, embeddings: Tensor, assignments: Tensor) -> Tensor:
        """The loss of pixel embeddings ``(N, D, H, W)`` under soft assignments ``(N, K, H, W)``."""
        return region_discrimination(embeddings, assignments, temperature=self.temperature)
