"""``MultiLevelInfoNCE``: CoMCL's multi-level contrastive loss over named quality/disease levels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

from torch import Tensor

from qualcl._validation import check_choice, check_embeddings, check_positive
from qualcl.functional import MultiLevelResult, NegativeMiner, PairLoss, multi_level_info_nce
from qualcl.functional.multi_level import NEGATIVE_SOURCES, check_pairs, validate_levels
from qualcl.kernels._dispatch import check_impl, prefers_dense
from qualcl.kernels.fused_info_nce import fused_info_nce_rows
from qualcl.losses._contrastive import gather_pool, reduce_across_ranks
from qualcl.losses.base import Loss

__all__ = ["MultiLevelInfoNCE"]

COMCL_LEVELS = ("L", "LQ_L", "H", "LQ_H")
COMCL_PAIRS = (("L", "LQ_L"), ("L", "H"), ("LQ_L", "LQ_H"))


class MultiLevelInfoNCE(Loss):
    r"""Sum of InfoNCE losses over ordered pairs of levels, with no same-level negatives.

    .. math::
        L = \sum_{(m,n)} w_{mn} L^{m,n}, \qquad
        \ell_i^{m,n} = -\log \frac{e^{s(e_i, \tilde e_i)/\tau}}
        {e^{s(e_i, \tilde e_i)/\tau} + \sum_k e^{s(e_i, e^n_k)/\tau}}

    For a pair ``(m, n)`` the anchors are ``view1`` rows of level ``m``, each positive is the same
    row of ``view2`` (the other augmentation), and the negatives are the rows of level ``n``
    (``view2`` only, or both views with ``negatives_from="both"``). ``L^{m,n}`` is the mean of
    ``ell_i`` over anchors (the weighted mean ``sum s_i ell_i / sum s_i`` under a self-paced
    miner). The CoMCL defaults are the four levels HQ lesion ``L``, LQ lesion ``LQ_L``, HQ healthy
    ``H``, LQ healthy ``LQ_H`` and the three pairs ``(L, LQ_L)``, ``(L, H)``, ``(LQ_L, LQ_H)``
    with equal weights.

    Per-row ``weights`` ``(N,)`` multiply the miner's anchor weights in every pair the row
    anchors. ``reduction="sum"`` sums each pair's weighted anchor losses instead of averaging them;
    ``reduction="none"`` returns each row's ``sum_{(m,n)} w_{mn} s_i ell_i^{m,n}`` (its sum is the
    ``"sum"`` value; the default ``"mean"`` is the paper's sum of per-pair means, which is not a
    mean of those rows).

    Args:
        pairs: Ordered ``(m, n)`` pairs of level names.
        level_names: Names of the level ids used in ``levels`` (id ``j`` is ``level_names[j]``).
        temperature: ``tau > 0`` (paper: 0.07).
        pair_weights: One weight per pair (default: all 1, the paper's plain sum).
        negatives_from: ``"view2"`` or ``"both"``.
        miner: Optional :class:`qualcl.functional.NegativeMiner` restricting negatives and weighting
            anchors from the detached similarity block and the step (CoMCL's self-paced
            hard-negative miner). An ``nn.Module`` miner is registered as a submodule.
        gather_distributed: Under ``torch.distributed``, draw each pair's negatives from the rows of
            every rank (gathered with :func:`qualcl.distributed.gather_with_grad`) and reduce each
            pair's mean across ranks, so that the value averaged over ranks and the gradients after
            DDP's averaging equal one process on the concatenated batch (the local-loss scheme of
            :class:`~qualcl.losses.InfoNCE`). Give a self-paced miner ``gather_distributed=True``
            too, so that its quantile threshold is global. Dense per-pair blocks of local anchors ×
            global negatives: memory linear in the global batch.
        impl: ``"auto"`` (default), ``"naive"``, ``"torch"`` or ``"triton"``: ``"naive"`` builds each
            pair's dense similarity block, ``"torch"`` / ``"triton"`` run each pair through the fused
            :func:`qualcl.kernels.fused_info_nce`, ``"auto"`` is dense up to ``qualcl.kernels.DENSE_LIMIT``
            logits (N × N) and fused beyond. With a ``miner`` the dense path is always used: the
            miner's hook receives the dense similarity block.
        reduction: ``"mean"`` (the paper), ``"sum"`` or ``"none"`` (see above).

    Shape:
        - view1, view2: ``(N, D)``; levels: ``(N,)`` integer ids into ``level_names``.
        - Output: scalar (float32 for half inputs), or with ``output_dict=True`` the typed
          :class:`~qualcl.functional.MultiLevelResult`: ``.loss`` (the total; ``(N,)`` with
          ``reduction="none"``), ``.pair_losses``
          (``{"L/LQ_L": ..., ...}``) and ``.counts`` (``{"L/LQ_L": {"anchors": a, "negatives": b}}``).

    Raises:
        ValueError: A pair naming an unknown level, duplicate level names, a bad temperature or
            weights (at construction); an unknown level id or bad shapes (in ``forward``).

    Examples:
        >>> import torch
        >>> from qualcl.losses import MultiLevelInfoNCE
        >>> loss_fn = MultiLevelInfoNCE()  # CoMCL levels and pairs
        >>> z1, z2 = torch.randn(8, 128), torch.randn(8, 128)
        >>> levels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])  # L, LQ_L, H, LQ_H
        >>> out = loss_fn(z1, z2, levels, output_dict=True)
        >>> sorted(out.pair_losses), out.counts["L/H"]
        (['L/H', 'L/LQ_L', 'LQ_L/LQ_H'], {'anchors': 2, 'negatives': 2})

    Reference:
        CoMCL, "Clinical-oriented Multi-level Contrastive Learning", MICCAI 2024 (Hou et al.), Eq. 1.
    """

    family = "two_view"
    batch_global = True

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]] = COMCL_PAIRS,
        level_names: Sequence[str] = COMCL_LEVELS,
        temperature: float = 0.07,
        pair_weights: Sequence[float] | None = None,
        negatives_from: str = "view2",
        miner: NegativeMiner | None = None,
        impl: str = "auto",
        gather_distributed: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction, gather_distributed=gather_distributed)
        self.impl = check_impl(impl)
        self.level_names = tuple(str(name) for name in level_names)
        if len(set(self.level_names)) != len(self.level_names):
            raise ValueError(f"level_names must be unique, got {self.level_names}")
        if not pairs:
            raise ValueError("pairs must name at least one (anchor level, negative level) pair")
        ids = {name: i for i, name in enumerate(self.level_names)}
        self.pairs = tuple((str(m), str(n)) for m, n in pairs)
        for m, n in self.pairs:
            for name in (m, n):
                if name not in ids:
                    raise ValueError(f"pairs names unknown level {name!r}; known levels: {self.level_names}")
            if m == n:
                raise ValueError(f"pair ({m!r}, {n!r}) would use same-level negatives")
        self._pair_ids = [(ids[m], ids[n]) for m, n in self.pairs]
        self._pair_names = [f"{m}/{n}" for m, n in self.pairs]
        self.temperature = check_positive("temperature", temperature)
        _, weights = check_pairs(self._pair_ids, pair_weights, len(self.level_names))
        self.pair_weights = None if pair_weights is None else tuple(weights)
        self.negatives_from = check_choice("negatives_from", negatives_from, NEGATIVE_SOURCES)
        if miner is not None and not callable(miner):
            raise TypeError(f"miner must be callable, got {type(miner).__name__}")
        self.miner = miner

    @property
    def pair_names(self) -> tuple[str, ...]:
        """Keys of the per-pair losses in the ``output_dict``, e.g. ``("L/LQ_L", "L/H", "LQ_L/LQ_H")``."""
        return tuple(self._pair_names)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return (
            f"pairs={self.pairs}, level_names={self.level_names}, temperature={self.temperature}, "
            f"pair_weights={self.pair_weights}, negatives_from={self.negatives_from!r}, impl={self.impl!r}, "
            f"{self.protocol_repr()}"
        )

    def _pair_loss(
        self, anchors: Tensor, positives: Tensor, negatives: Tensor, *, temperature: float
    ) -> tuple[Tensor, Tensor]:
        """One pair's per-anchor losses through the fused kernel (inputs are already normalised)."""
        return fused_info_nce_rows(
            anchors,
            negatives,
            positive=positives,
            temperature=temperature,
            normalize=False,
            reduction="none",
            impl=self.impl,
        )

    @overload
    def forward(
        self,
        view1: Tensor,
        view2: Tensor,
        levels: Tensor,
        *,
        weights: Tensor | None = ...,
        step: int | None = ...,
        output_dict: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        view1: Tensor,
        view2: Tensor,
        levels: Tensor,
        *,
        weights: Tensor | None = ...,
        step: int | None = ...,
        output_dict: Literal[True],
    ) -> MultiLevelResult: ...

    def forward(
        self,
        view1: Tensor,
        view2: Tensor,
        levels: Tensor,
        *,
        weights: Tensor | None = None,
        step: int | None = None,
        output_dict: bool = False,
    ) -> Tensor | MultiLevelResult:
        """Compute the loss; see the class docstring for shapes and the dict layout."""
        check_embeddings("view1", view1, nonzero=True)
        n = view1.shape[0]
        validate_levels(levels, n, self.level_names)
        candidates = 2 * n if self.negatives_from == "both" else n
        fused: PairLoss | None = None
        if self.miner is None and not self.distributed and not prefers_dense(self.impl, n, candidates):
            fused = self._pair_loss
        pool: tuple[Tensor, Tensor, Tensor] | None = None
        reduce = None
        if self.distributed:
            check_embeddings("view2", view2, dim=view1.shape[1], nonzero=True)
            pool2 = gather_pool(view2, levels.to(view1.device), distributed=True)
            view1_all = (
                gather_pool(view1, distributed=True).features if self.negatives_from == "both" else pool2.features
            )
            assert pool2.labels is not None
            pool = (view1_all, pool2.features, pool2.labels)

            def reduce(losses: Tensor, weights: Tensor | None, reduction: str) -> Tensor:
                weighted = losses if weights is None else losses * weights.to(losses.dtype)
                return reduce_across_ranks(weighted, weights, reduction)

        result = multi_level_info_nce(
            view1,
            view2,
            levels,
            self._pair_ids,
            temperature=self.temperature,
            pair_weights=self.pair_weights,
            negatives_from=self.negatives_from,
            miner=self.miner,
            step=step,
            pair_names=self._pair_names,
            pair_loss=fused,
            negative_pool=pool,
            reduce=reduce,
            weights=weights,
            reduction=self.reduction,
        )
        return result if output_dict else result.loss
