"""Local discrimination's losses as modules: patch discrimination, mixup consistency, region discrimination."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import check_embeddings, check_int, check_positive
from qualcl.distributed import gather_with_grad
from qualcl.functional.local import _region_inputs, _region_logits, patch_discrimination_rows
from qualcl.losses.base import Loss

__all__ = ["MixupConsistencyLoss", "PatchDiscriminationLoss", "RegionDiscriminationLoss"]


class _SpreadingCriterion(Loss):
    """What patch discrimination and mixup consistency share: the criterion of two views' rows, exact under DDP."""

    family = "two_view"
    batch_global = True

    def __init__(
        self,
        temperature: float = 0.1,
        block_size: int | None = None,
        reduction: str = "mean",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, gather_distributed=gather_distributed)
        self.temperature = check_positive("temperature", temperature)
        self.block_size = None if block_size is None else check_int("block_size", block_size)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"temperature={self.temperature}, block_size={self.block_size}, {self.protocol_repr()}"

    def _pairs(self, view1: Tensor, view2: Tensor, weights: Tensor | None) -> Tensor:
        """Rows ``[view1; view2]`` against the columns ``[view1 of every rank; view2 of every rank]``, reduced.

        Row ``i`` of ``view1`` and row ``i`` of ``view2`` are each other's positive; the anchor
        losses of the two are averaged into item ``i``'s loss, which ``weights`` ``(n,)`` weighs.
        """
        n = view1.shape[0]
        w = self.checked_weights(weights, n, view1.device)
        anchors = torch.cat([view1, view2.to(view1.dtype)])
        local = torch.arange(n, device=view1.device)
        if self.distributed:
            with torch.no_grad():  # the columns are constants of this loss: no gradient crosses ranks
                everyone, offset = gather_with_grad(torch.stack([view1, view2.to(view1.dtype)], 1).detach())
            total = everyone.shape[0]
            columns = torch.cat([everyone[:, 0], everyone[:, 1]])
        else:
            offset, total, columns = 0, n, anchors
        first, second = local + offset, local + offset + total
        losses = patch_discrimination_rows(
            anchors,
            columns,
            torch.cat([first, second]),
            torch.cat([second, first]),
            temperature=self.temperature,
            block_size=self.block_size,
        )
        return self.reduce((losses[:n] + losses[n:]) / 2, w)


class PatchDiscriminationLoss(_SpreadingCriterion):
    r"""Patch discrimination (the invariant-and-spreading criterion): row ``i`` of ``view2`` is row ``i``'s positive.

    Over the ``N = 2n`` L2-normalised items ``f = [view1; view2]``, with ``i'`` the positive of ``i``:

    .. math::
        \ell_i = -\Big[ \log P_{i'|i} + \sum_{j \notin \{i, i'\}} \log\big(1 - P_{j|i}\big) \Big],
        \qquad P_{k|i} = \frac{e^{f_i·f_k / T}}{\sum_{l \ne i} e^{f_i·f_l / T}}

    Gradients flow through the anchor rows only (the partners and the similarity columns are
    detached, as in the local-discrimination code). Per-anchor losses are per *item*: item ``i``
    (row ``i`` of both views) has loss ``(ℓ_i + ℓ_{i+n}) / 2`` (``reduction="none"`` returns these
    ``(n,)``), and ``weights`` ``(n,)`` weigh both of its rows, so the unweighted mean is the mean of
    all ``2n`` rows, the code's loss. The loss streams over column blocks with an exact backward (on
    CPU always, blocks of 256; on accelerators beyond ``2^24`` similarities), so ``256·B`` patch items
    never need the dense matrix (:func:`qualcl.functional.patch_discrimination_rows`): at ``B = 64``
    (16,384 items) on 2 CPU cores it used about 20× less memory than the code's dense criterion and
    ran 2.5× faster (``benchmarks/results/patch_discrimination_cpu.md``).

    With ``gather_distributed=True`` under ``torch.distributed`` each rank's rows are contrasted
    with both views' items of every rank (gathered without gradient: the columns are constants of
    this loss), in the layout ``[view1 of rank 0, rank 1, ...; view2 of rank 0, rank 1, ...]``, and
    the mean is taken over the items of every rank: exactly one process on the concatenation of
    each view over ranks, once DDP has averaged gradients.

    Args:
        temperature: ``T > 0`` (0.1).
        block_size: Columns per block (``None``: 256 on CPU, else dense when small and blocks beyond).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the ``n`` items.
        gather_distributed: Contrast with the items of every rank (see above).

    Shape:
        ``view1``, ``view2``: ``(n, D)``, or ``view1`` ``(2n, D)`` stacked ``[view1; view2]`` with
        ``view2=None`` (the code's layout); ``weights``: ``(n,)``; output: scalar, or ``(n,)`` for
        ``"none"``.

    Examples:
        >>> import torch
        >>> from qualcl.functional import grid_items, patch_grid
        >>> grids = patch_grid(torch.randn(4, 32, 64, 64), size=8)  # [x1_1, x2_1, x1_2, x2_2] realigned
        >>> items = grid_items(grids)  # the first views' cells, then the second views'
        >>> loss = PatchDiscriminationLoss()
        >>> loss(items[:128], items[128:]).shape, bool(loss(items).allclose(loss(items[:128], items[128:])))
        (torch.Size([]), True)

    Reference:
        Ye et al., "Unsupervised Embedding Learning via Invariant and Spreading Instance Feature",
        CVPR 2019; Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023.
    """

    def forward(self, view1: Tensor, view2: Tensor | None = None, *, weights: Tensor | None = None) -> Tensor:
        """The loss of the two views' items; see the class docstring for shapes."""
        check_embeddings("view1", view1, nonzero=True)
        if view2 is None:
            if view1.shape[0] % 2:
                raise ValueError(
                    f"view1 without view2 must stack both views (2n rows, row i's positive is row i + n), "
                    f"got {view1.shape[0]} rows"
                )
            view1, view2 = view1.chunk(2)
        else:
            check_embeddings("view2", view2, dim=view1.shape[1], nonzero=True)
            if view2.shape[0] != view1.shape[0]:
                raise ValueError(
                    f"view1 and view2 need the same number of rows, got {view1.shape[0]} and {view2.shape[0]}"
                )
        return self._pairs(view1, view2, weights)


class MixupConsistencyLoss(_SpreadingCriterion):
    r"""Mixup consistency: each mixup cell's positive is its detached target ``normalize(w·f_1 + (1 − w)·f_2)``.

    The criterion of :class:`PatchDiscriminationLoss` over ``[view1; view2]`` with ``view1`` the
    mixup cells (anchors) and ``view2`` their targets, detached
    (:func:`qualcl.functional.mixup_targets`, flattened by :func:`qualcl.functional.grid_items`).
    The targets' own rows enter the value, as in the code, but carry no gradient; cell ``i``'s loss
    is ``(ℓ_i + ℓ_{i+M}) / 2``, weighed by ``weights[i]``, so the unweighted mean is the code's mean
    over the ``2M`` rows. Exact under DDP as :class:`PatchDiscriminationLoss`.

    Args:
        temperature: ``T > 0`` (0.1).
        block_size: Columns per block.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the ``M`` cells.
        gather_distributed: Contrast with the cells and targets of every rank.

    Shape:
        ``view1`` (mixup cells), ``view2`` (targets): ``(M, D)``; ``weights``: ``(M,)``; output:
        scalar, or ``(M,)`` for ``"none"``.

    Examples:
        >>> import torch
        >>> MixupConsistencyLoss()(torch.randn(8, 4), torch.randn(8, 4)).shape
        torch.Size([])

    Reference:
        Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023.
    """

    def forward(self, view1: Tensor, view2: Tensor, *, weights: Tensor | None = None) -> Tensor:
        """The loss of the mixup cells ``(M, D)`` against their targets ``(M, D)``."""
        check_embeddings("view1", view1, nonzero=True)
        check_embeddings("view2", view2, dim=view1.shape[1], nonzero=True)
        if view2.shape[0] != view1.shape[0]:
            raise ValueError(
                f"view1 (mixup cells) and view2 (targets) need the same number of rows, "
                f"got {view1.shape[0]} and {view2.shape[0]}"
            )
        return self._pairs(view1, view2.detach(), weights)


class RegionDiscriminationLoss(Loss):
    r"""Region discrimination: cross-entropy of each region feature to its own cluster's batch prototype.

    .. math::
        \ell_n = -\frac{1}{K} \sum_{k} \log \frac{e^{r_{n,k}·c_k / T}}{\sum_{j} e^{r_{n,k}·c_j / T}},
        \qquad r_{n,k} = \frac{\operatorname{mean}_p a_{n,k}(p) e_n(p)}{\lVert\cdot\rVert},
        \quad c_k = \frac{\operatorname{mean}_n r_{n,k}}{\lVert\cdot\rVert}

    The per-anchor loss is per image (the mean over its ``K`` regions), so the unweighted mean is
    the code's mean over all ``N·K`` regions. Prototypes are not detached (as in the code); the
    normalisations keep gradients bounded for all-zero pixels and clusters without assignment mass
    (:data:`qualcl.functional.local.REGION_EPS`). See
    :func:`qualcl.functional.region_discrimination`.

    With ``gather_distributed=True`` under ``torch.distributed`` the prototypes are the means over
    the region features of every rank (gathered with gradients, which return to their owners), and
    the mean is taken over the images of every rank: exactly one process on the concatenated batch,
    once DDP has averaged gradients.

    Args:
        temperature: ``T > 0`` (0.2).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the images.
        gather_distributed: Global prototypes and mean (see above).

    Shape:
        ``embeddings``: ``(N, D, H, W)``; ``assignments``: ``(N, K, H, W)``, in ``[0, 1]`` and summing
        to 1 over ``K`` (within ``1e-3``); ``weights``: ``(N,)``; output: scalar, or ``(N,)`` for
        ``"none"``.

    Examples:
        >>> import torch
        >>> e, a = torch.randn(2, 8, 6, 6), torch.softmax(torch.randn(2, 4, 6, 6), dim=1)
        >>> RegionDiscriminationLoss()(e, a).shape
        torch.Size([])

    Reference:
        Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023
        (``step2_train_ld.py::compute_clustering_loss``).
    """

    family = "clustering"
    batch_global = True

    def __init__(self, temperature: float = 0.2, reduction: str = "mean", gather_distributed: bool = False) -> None:
        super().__init__(reduction=reduction, gather_distributed=gather_distributed)
        self.temperature = check_positive("temperature", temperature)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"temperature={self.temperature}, {self.protocol_repr()}"

    def forward(self, embeddings: Tensor, assignments: Tensor, *, weights: Tensor | None = None) -> Tensor:
        """The loss of pixel embeddings ``(N, D, H, W)`` under soft assignments ``(N, K, H, W)``."""
        regions, temperature = _region_inputs(embeddings, assignments, self.temperature)
        n, k = regions.shape[:2]
        w = self.checked_weights(weights, n, regions.device)
        every_region = gather_with_grad(regions)[0] if self.distributed else regions
        logits = _region_logits(regions, every_region, temperature)
        target = torch.arange(k, device=regions.device).repeat(n)
        losses = F.cross_entropy(logits.reshape(-1, k), target, reduction="none").view(n, k).mean(dim=1)
        return self.reduce(losses, w)
