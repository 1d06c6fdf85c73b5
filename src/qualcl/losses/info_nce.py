"""``InfoNCE``: the stateful wrapper of :func:`qualcl.functional.info_nce`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qualcl import kernels
from qualcl._validation import check_embeddings, check_mask, check_positive, check_reduction
from qualcl.distributed import gather_with_grad, is_distributed, world_size
from qualcl.functional import info_nce
from qualcl.kernels._dispatch import check_impl, prefers_dense
from qualcl.losses._distributed import reduce_across_ranks

__all__ = ["InfoNCE"]


class InfoNCE(nn.Module):
    r"""InfoNCE with shared negatives, masks, hard-negative top-K and per-anchor weights.

    .. math::
        \ell_i = -\log \frac{e^{s_{ii}/\tau}}{e^{s_{ii}/\tau} + \sum_{k \in K_i} e^{s_{ik}/\tau}}

    Cosine similarity (inputs normalised inside). See :func:`qualcl.functional.info_nce` for the
    exact semantics of every argument. Defaults: ``temperature=0.07``, weighted-mean reduction.

    With ``gather_distributed=True`` under ``torch.distributed`` it uses the *local-loss* scheme:
    local anchors against candidates gathered from every rank with
    :func:`qualcl.distributed.gather_with_grad` (memory linear in the global batch). In-batch
    negatives (``negatives=None``) are then every rank's positives except the anchor's own, and a
    ``negative_mask`` must have shape ``(N_local, M_global)``. The returned value is scaled so that
    DDP's gradient averaging gives exactly the gradients of one process on the concatenated batch
    (see :func:`qualcl.losses._distributed.reduce_across_ranks`).

    ``impl`` picks the computation: ``"naive"`` builds the ``(N, M)`` logits
    (:func:`qualcl.functional.info_nce`); ``"torch"`` / ``"triton"`` use the fused kernel
    :func:`qualcl.kernels.info_nce` (streaming, memory O((N + M)·D)); ``"auto"`` (default) keeps the
    dense path up to ``qualcl.kernels.DENSE_LIMIT`` logits and uses the kernel (Triton on CUDA)
    beyond. All give the same loss and gradients up to float rounding.

    Args:
        temperature: ``tau > 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        gather_distributed: Gather candidates across processes.
        impl: ``"auto"``, ``"naive"``, ``"torch"`` or ``"triton"``.

    Shape:
        - query, positive: ``(N, D)``; negatives: ``(M, D)``; negative_mask: ``(N, M)`` bool;
          weights: ``(N,)``.
        - Output: scalar, or ``(N,)`` with ``reduction="none"`` (float32 for half inputs).

    Example:
        >>> import torch
        >>> from qualcl.losses import InfoNCE
        >>> loss_fn = InfoNCE(temperature=0.1)
        >>> q, k = torch.randn(16, 32), torch.randn(16, 32)
        >>> bank = torch.randn(256, 32)
        >>> loss = loss_fn(q, k, bank, top_k=32, weights=torch.rand(16))
        >>> loss.shape
        torch.Size([])

    Reference:
        Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        reduction: str = "mean",
        gather_distributed: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.reduction = check_reduction(reduction)
        self.gather_distributed = bool(gather_distributed)
        self.impl = check_impl(impl)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return (
            f"temperature={self.temperature}, reduction={self.reduction!r}, "
            f"gather_distributed={self.gather_distributed}, impl={self.impl!r}"
        )

    def forward(
        self,
        query: Tensor,
        positive: Tensor,
        negatives: Tensor | None = None,
        *,
        negative_mask: Tensor | None = None,
        top_k: int | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss; see the class docstring for shapes."""
        distributed = self.gather_distributed and is_distributed()
        n = query.shape[0] if isinstance(query, Tensor) and query.ndim else 0
        m = n if not isinstance(negatives, Tensor) or not negatives.ndim else negatives.shape[0]
        if not prefers_dense(self.impl, n, m * (world_size() if distributed else 1)):
            return self._fused(query, positive, negatives, negative_mask, top_k, weights, distributed)
        if not distributed:
            return info_nce(
                query,
                positive,
                negatives,
                temperature=self.temperature,
                negative_mask=negative_mask,
                top_k=top_k,
                weights=weights,
                reduction=self.reduction,
            )
        check_embeddings("query", query, nonzero=True)
        check_embeddings("positive", positive, dim=query.shape[1], nonzero=True)
        n = query.shape[0]
        if negatives is None:
            candidates, offset = gather_with_grad(positive)
            keep = torch.ones(n, candidates.shape[0], dtype=torch.bool, device=query.device)
            own = torch.arange(n, device=query.device)
            keep[own, own + offset] = False
        else:
            check_embeddings("negatives", negatives, dim=query.shape[1], nonzero=True)
            candidates, _ = gather_with_grad(negatives)
            keep = None
        if negative_mask is not None:
            check_mask("negative_mask", negative_mask, (n, candidates.shape[0]))
            keep = negative_mask if keep is None else keep & negative_mask
        losses = info_nce(
            query,
            positive,
            candidates,
            temperature=self.temperature,
            negative_mask=keep,
            top_k=top_k,
            weights=weights,
            reduction="none",
        )
        return reduce_across_ranks(losses, weights, self.reduction)

    def _fused(
        self,
        query: Tensor,
        positive: Tensor,
        negatives: Tensor | None,
        negative_mask: Tensor | None,
        top_k: int | None,
        weights: Tensor | None,
        distributed: bool,
    ) -> Tensor:
        """The same loss through :func:`qualcl.kernels.info_nce` (no ``(N, M)`` logits)."""
        check_embeddings("query", query, nonzero=True)
        check_embeddings("positive", positive, dim=query.shape[1], nonzero=True)
        n = query.shape[0]
        offset = 0
        if negatives is None:
            candidates, offset = gather_with_grad(positive) if distributed else (positive, 0)
        else:
            check_embeddings("negatives", negatives, dim=query.shape[1], nonzero=True)
            candidates = gather_with_grad(negatives)[0] if distributed else negatives
        local_reduction = "none" if self.reduction == "none" else ("sum" if distributed else self.reduction)
        loss = kernels.info_nce(
            query,
            candidates,
            positive=None if negatives is None else positive,
            positive_index=torch.arange(n, device=query.device) + offset if negatives is None else None,
            negative_mask=negative_mask,
            temperature=self.temperature,
            top_k=top_k,
            weights=weights,
            reduction=local_reduction,
            impl=self.impl,
        )
        if not distributed or self.reduction == "none":
            return loss
        # reduce_across_ranks on one "row" holding the local weighted sum: the global denominator
        # is the all-reduced sum of the weights (of ones without weights, i.e. the global N)
        ones = weights if weights is not None else query.new_ones(n)
        return reduce_across_ranks(loss.reshape(1), ones, self.reduction)
