"""``InfoNCE``: the contrastive entry point (one positive, class-level positives or SupCon), DDP-exact."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from qualcl._validation import check_embeddings, check_labels, check_positive
from qualcl.kernels._dispatch import check_impl
from qualcl.losses._contrastive import contrast, gather_pool
from qualcl.losses.base import Loss

__all__ = ["InfoNCE"]


class InfoNCE(Loss):
    r"""InfoNCE with one or several positives per anchor, masks, hard-negative top-K and weights.

    .. math::
        \ell_i = \log\Big(\sum_{j \in P_i \cup K_i} e^{s_{ij}/\tau}\Big)
                 - \frac{1}{|P_i|} \sum_{j \in P_i} s_{ij}/\tau

    with cosine similarities ``s`` (inputs normalised inside), anchors the rows of ``view1``
    (queries), positives ``P_i`` and negatives ``K_i`` chosen by what is passed (family
    ``two_view``: ``view2[i]`` is the positive of ``view1[i]``):

    | call | positives of anchor ``i`` / negatives |
    |---|---|
    | ``loss(v1, v2)`` | ``v2[i]`` / the other rows of ``v2`` (in-batch) |
    | ``loss(v1, v2, bank)`` | ``v2[i]`` / every row of ``bank`` |
    | ``loss(v1, v2, labels=y)`` | every ``v2[j]`` with ``y[j] == y[i]`` / the rest |
    | ``loss(v1, v2, bank, labels=y, negative_labels=yb)`` | ``v2[i]`` and ``bank``'s same-label rows / its other rows |
    | ``loss(z, labels=y)`` | SupCon: every other ``z[j]`` with ``y[j] == y[i]`` / the other labels |

    With one positive this is the classic ``-log e^{s_ii/tau} / (e^{s_ii/tau} + sum_k e^{s_ik/tau})``;
    with several it is the "outside the log" average of SupCon (Khosla et al., 2020). A
    ``negative_mask`` removes negatives, ``top_k`` keeps only the ``top_k`` most similar of them
    (selection on detached values). **A row with nothing to contrast** (no positive, e.g. a label
    seen once in a SupCon batch, or no negative left) has loss 0 and leaves the weighted mean, as in
    pytorch-metric-learning's ``SupConLoss``; a batch of one label gives 0.

    Defaults: ``temperature=0.07``, weighted-mean reduction. ``impl`` picks the computation:
    ``"naive"`` builds the ``(N, M)`` logits; ``"torch"`` / ``"triton"`` stream through
    :func:`qualcl.kernels.fused_info_nce` (memory O((N + M)·D)); ``"auto"`` (default) keeps the dense
    path up to ``qualcl.kernels.DENSE_LIMIT`` logits and streams beyond (Triton on CUDA). All give
    the same loss and gradients up to float rounding.

    With ``gather_distributed=True`` under ``torch.distributed`` it uses the *local-loss* scheme:
    local anchors against the candidates (and their labels) gathered from every rank, gradients
    summed back to their owners, the mean taken over the contrasted rows of every rank: after DDP's
    gradient averaging the gradients equal one process on the concatenated batch, also for unequal
    batches. A ``negative_mask`` then has shape ``(N_local, M_global)``.

    Args:
        temperature: ``tau > 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        gather_distributed: Gather candidates across processes.
        impl: ``"auto"``, ``"naive"``, ``"torch"`` or ``"triton"``.

    Shape:
        - view1: ``(N, D)``; view2: ``(N, D)``; negatives: ``(M, D)``; labels, weights: ``(N,)``;
          negative_labels: ``(M,)``; negative_mask: ``(N, M)`` bool (``M = N`` in-batch or SupCon).
        - Output: scalar, or ``(N,)`` with ``reduction="none"`` (float32 for half inputs).

    Examples:
        >>> import torch
        >>> from qualcl.losses import InfoNCE
        >>> loss_fn = InfoNCE(temperature=0.1)
        >>> q, k = torch.randn(16, 32), torch.randn(16, 32)
        >>> bank = torch.randn(256, 32)
        >>> loss_fn(q, k, bank, top_k=32, weights=torch.rand(16)).shape
        torch.Size([])
        >>> grades = torch.randint(0, 5, (16,))
        >>> loss_fn(torch.cat([q, k]), labels=torch.cat([grades, grades])).shape  # SupCon
        torch.Size([])

    Reference:
        Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018; Khosla et
        al., "Supervised Contrastive Learning", NeurIPS 2020.
    """

    family = "two_view"
    batch_global = True

    def __init__(
        self,
        temperature: float = 0.07,
        reduction: str = "mean",
        gather_distributed: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__(reduction=reduction, gather_distributed=gather_distributed)
        self.temperature = check_positive("temperature", temperature)
        self.impl = check_impl(impl)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"temperature={self.temperature}, {self.protocol_repr()}, impl={self.impl!r}"

    def forward(
        self,
        view1: Tensor,
        view2: Tensor | None = None,
        negatives: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        negative_labels: Tensor | None = None,
        negative_mask: Tensor | None = None,
        top_k: int | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss; see the class docstring for the forms and shapes."""
        check_embeddings("view1", view1, nonzero=True)
        n, d = view1.shape
        if view2 is not None:
            check_embeddings("view2", view2, dim=d, nonzero=True)
            if view2.shape[0] != n:
                raise ValueError(f"view2 must have shape ({n}, {d}) like view1, got {tuple(view2.shape)}")
        if negatives is not None:
            if view2 is None:
                raise ValueError("negatives need a positive per anchor: call loss(view1, view2, negatives)")
            check_embeddings("negatives", negatives, dim=d, nonzero=True)
        if labels is not None:
            labels = check_labels("labels", labels, n, view1.device)
        if negative_labels is not None:
            if negatives is None:
                raise ValueError("negative_labels label the rows of negatives: pass negatives too")
            negative_labels = check_labels("negative_labels", negative_labels, negatives.shape[0], view1.device)
        if negatives is not None and labels is not None and negative_labels is None:
            raise ValueError("with negatives, labels= needs negative_labels= (the labels of the negatives)")
        if view2 is None and labels is None:
            raise ValueError("no positives: pass view2= (one positive per anchor) or labels= (SupCon)")
        weights = self.checked_weights(weights, n, view1.device)

        distributed = self.distributed
        columns: dict[str, Any] = {}
        if negatives is not None:  # a separate positive; same-label negatives become positives
            pool = gather_pool(negatives, negative_labels, distributed=distributed)
            columns["positive"] = view2
        elif view2 is not None:  # in-batch: the other rows' positives are the negatives
            pool = gather_pool(view2, labels, distributed=distributed)
            columns["positive_index"] = pool.own_columns(n)
        else:  # SupCon: every other row of the batch, same-label ones positive
            pool = gather_pool(view1, labels, distributed=distributed)
            columns["exclude_index"] = pool.own_columns(n)
        if labels is not None:
            columns["labels"], columns["candidate_labels"] = labels, pool.labels
        return contrast(
            view1,
            pool.features,
            distributed=distributed,
            reduction=self.reduction,
            impl=self.impl,
            negative_mask=negative_mask,
            temperature=self.temperature,
            top_k=top_k,
            weights=weights,
            **columns,
        )
