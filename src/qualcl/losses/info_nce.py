"""``InfoNCE``: the contrastive entry point (one positive, class-level positives or SupCon), DDP-exact."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from qualcl._validation import check_embeddings, check_labels, check_positive, check_reduction
from qualcl.distributed import is_distributed
from qualcl.kernels._dispatch import check_impl
from qualcl.losses._contrastive import contrast, gather_pool

__all__ = ["InfoNCE"]


class InfoNCE(nn.Module):
    r"""InfoNCE with one or several positives per anchor, masks, hard-negative top-K and weights.

    .. math::
        \ell_i = \log\Big(\sum_{j \in P_i \cup K_i} e^{s_{ij}/\tau}\Big)
                 - \frac{1}{|P_i|} \sum_{j \in P_i} s_{ij}/\tau

    with cosine similarities ``s`` (inputs normalised inside), positives ``P_i`` and negatives
    ``K_i`` chosen by what is passed:

    | call | positives of anchor ``i`` / negatives |
    |---|---|
    | ``loss(q, p)`` | ``p[i]`` / the other rows of ``p`` (in-batch) |
    | ``loss(q, p, bank)`` | ``p[i]`` / every row of ``bank`` |
    | ``loss(q, p, labels=y)`` | every ``p[j]`` with ``y[j] == y[i]`` / the rest |
    | ``loss(q, p, bank, labels=y, negative_labels=yb)`` | ``p[i]`` and ``bank``'s same-label rows / its other rows |
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
        - query: ``(N, D)``; positive: ``(N, D)``; negatives: ``(M, D)``; labels, weights: ``(N,)``;
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
        positive: Tensor | None = None,
        negatives: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        negative_labels: Tensor | None = None,
        negative_mask: Tensor | None = None,
        top_k: int | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss; see the class docstring for the forms and shapes."""
        check_embeddings("query", query, nonzero=True)
        n, d = query.shape
        if positive is not None:
            check_embeddings("positive", positive, dim=d, nonzero=True)
            if positive.shape[0] != n:
                raise ValueError(f"positive must have shape ({n}, {d}) like query, got {tuple(positive.shape)}")
        if negatives is not None:
            if positive is None:
                raise ValueError("negatives need a positive per anchor: call loss(query, positive, negatives)")
            check_embeddings("negatives", negatives, dim=d, nonzero=True)
        if labels is not None:
            labels = check_labels("labels", labels, n, query.device)
        if negative_labels is not None:
            if negatives is None:
                raise ValueError("negative_labels label the rows of negatives: pass negatives too")
            negative_labels = check_labels("negative_labels", negative_labels, negatives.shape[0], query.device)
        if negatives is not None and labels is not None and negative_labels is None:
            raise ValueError("with negatives, labels= needs negative_labels= (the labels of the negatives)")
        if positive is None and labels is None:
            raise ValueError("no positives: pass positive= (one per anchor) or labels= (SupCon)")

        distributed = self.gather_distributed and is_distributed()
        columns: dict[str, Any] = {}
        if negatives is not None:  # a separate positive; same-label negatives become positives
            pool = gather_pool(negatives, negative_labels, distributed=distributed)
            columns["positive"] = positive
        elif positive is not None:  # in-batch: the other rows' positives are the negatives
            pool = gather_pool(positive, labels, distributed=distributed)
            columns["positive_index"] = pool.own_columns(n)
        else:  # SupCon: every other row of the batch, same-label ones positive
            pool = gather_pool(query, labels, distributed=distributed)
            columns["exclude_index"] = pool.own_columns(n)
        if labels is not None:
            columns["labels"], columns["candidate_labels"] = labels, pool.labels
        return contrast(
            query,
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
