"""``NTXentLoss``: SimCLR's NT-Xent on two views, with exact gradients across DDP ranks."""

from __future__ import annotations

import torch
from torch import Tensor

from qualcl._validation import check_embeddings, check_positive
from qualcl.kernels._dispatch import check_impl, prefers_dense
from qualcl.kernels.fused_info_nce import fused_info_nce_rows
from qualcl.losses._contrastive import gather_pool
from qualcl.losses.base import Loss

__all__ = ["NTXentLoss"]


class NTXentLoss(Loss):
    r"""NT-Xent (normalised temperature-scaled cross-entropy) over the ``2N`` rows of two views.

    .. math::
        \ell_i = -\log \frac{e^{s(z_i, z_{i^+})/\tau}}{\sum_{j \ne i} e^{s(z_i, z_j)/\tau}},
        \qquad L = \frac{1}{2N} \sum_{i=1}^{2N} \ell_i

    over ``z = [view1; view2]``, ``i^+`` the other view of row ``i``, cosine similarity ``s``; equal
    to :func:`qualcl.functional.nt_xent`. The name and the call ``loss(out0, out1)`` are lightly's
    ``NTXentLoss`` (same value, ``temperature`` and ``gather_distributed``; lightly's memory bank
    is not offered). It is *not* pytorch-metric-learning's ``NTXentLoss(embeddings, labels)``:
    that one is :class:`~qualcl.losses.InfoNCE` with ``labels=`` (SupCon form), or this loss
    equals it on ``[view1; view2]`` with labels ``[0..N-1, 0..N-1]``.

    The anchors are the ``N`` pairs: pair ``i`` has the loss ``(ℓ_i + ℓ_{i+N}) / 2``, so the mean
    over pairs is ``L``, ``weights`` ``(N,)`` weigh pairs and ``reduction="none"`` returns ``(N,)``.

    With ``gather_distributed=True`` under ``torch.distributed``, the local ``2N_r`` rows are
    contrasted with the rows of every rank (:func:`qualcl.distributed.gather_with_grad`) and the mean
    is taken across ranks: the value averaged over ranks and the gradients after DDP's averaging
    equal one process on the concatenated views (tested on two gloo processes).

    Args:
        temperature: ``tau > 0``.
        gather_distributed: Gather the candidates across processes.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        impl: ``"auto"``, ``"naive"``, ``"torch"`` or ``"triton"`` (as :class:`~qualcl.losses.InfoNCE`).

    Shape:
        ``view1``, ``view2``: ``(N, D)``; weights ``(N,)``; output: scalar, or ``(N,)``.

    Examples:
        >>> import torch
        >>> loss = NTXentLoss(temperature=0.5)(torch.randn(4, 8), torch.randn(4, 8))
        >>> loss.shape
        torch.Size([])

    Reference:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations"
        (SimCLR), ICML 2020.
    """

    family = "two_view"
    batch_global = True

    def __init__(
        self,
        temperature: float = 0.07,
        gather_distributed: bool = False,
        reduction: str = "mean",
        impl: str = "auto",
    ) -> None:
        super().__init__(reduction=reduction, gather_distributed=gather_distributed)
        self.temperature = check_positive("temperature", temperature)
        self.impl = check_impl(impl)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"temperature={self.temperature}, {self.protocol_repr()}, impl={self.impl!r}"

    def forward(self, view1: Tensor, view2: Tensor, *, weights: Tensor | None = None) -> Tensor:
        """The loss of the two views ``(N, D)``."""
        check_embeddings("view1", view1, nonzero=True)
        check_embeddings("view2", view2, dim=view1.shape[1], nonzero=True)
        if view1.shape != view2.shape:
            raise ValueError(
                f"view1 and view2 must have the same shape, got {tuple(view1.shape)} and {tuple(view2.shape)}"
            )
        n = view1.shape[0]
        weights = self.checked_weights(weights, n, view1.device)
        first, second = (
            gather_pool(view1, distributed=self.distributed),
            gather_pool(view2, distributed=self.distributed),
        )
        total = first.features.shape[0]
        own = first.own_columns(n)
        candidates = torch.cat([first.features, second.features])
        impl = "naive" if prefers_dense(self.impl, 2 * n, 2 * total) else self.impl
        losses, counted = fused_info_nce_rows(
            torch.cat([view1, view2]),
            candidates,
            positive_index=torch.cat([own + total, own]),
            exclude_index=torch.cat([own, own + total]),
            temperature=self.temperature,
            reduction="none",
            impl=impl,
        )
        return self.reduce((losses[:n] + losses[n:]) / 2, weights, counted=(counted[:n] + counted[n:]) / 2)
