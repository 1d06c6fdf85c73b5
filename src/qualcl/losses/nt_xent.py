"""``NTXentLoss``: SimCLR's NT-Xent on two views, with exact gradients across DDP ranks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qualcl._validation import check_embeddings, check_positive
from qualcl.distributed import is_distributed
from qualcl.functional import nt_xent
from qualcl.losses._contrastive import contrast, gather_pool

__all__ = ["NTXentLoss"]


class NTXentLoss(nn.Module):
    r"""NT-Xent (normalised temperature-scaled cross-entropy) over the ``2N`` rows of two views.

    .. math::
        \ell_i = -\log \frac{e^{s(z_i, z_{i^+})/\tau}}{\sum_{j \ne i} e^{s(z_i, z_j)/\tau}},
        \qquad L = \frac{1}{2N} \sum_{i=1}^{2N} \ell_i

    over ``z = [z1; z2]``, ``i^+`` the other view of row ``i``, cosine similarity ``s``; equal to
    :func:`qualcl.functional.nt_xent` and to pytorch-metric-learning's ``NTXentLoss`` on
    ``[z1; z2]`` with labels ``[0..N-1, 0..N-1]``.

    With ``gather_distributed=True`` under ``torch.distributed``, the local ``2N_r`` rows are
    contrasted with the rows of every rank (:func:`qualcl.distributed.gather_with_grad`) through
    the streaming kernel :func:`qualcl.kernels.fused_info_nce`, and the mean is taken across ranks: the
    value averaged over ranks and the gradients after DDP's averaging equal one process on the
    concatenated batch (tested on two gloo processes).

    Args:
        temperature: ``tau > 0``.
        gather_distributed: Gather the candidates across processes.

    Shape:
        ``z1``, ``z2``: ``(N, D)``; output: scalar.

    Examples:
        >>> import torch
        >>> loss = NTXentLoss(temperature=0.5)(torch.randn(4, 8), torch.randn(4, 8))
        >>> loss.shape
        torch.Size([])

    Reference:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations"
        (SimCLR), ICML 2020.
    """

    def __init__(self, temperature: float = 0.07, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The loss of the two views ``(N, D)``."""
        if not (self.gather_distributed and is_distributed()):
            return nt_xent(z1, z2, temperature=self.temperature)
        check_embeddings("z1", z1, nonzero=True)
        check_embeddings("z2", z2, dim=z1.shape[1], nonzero=True)
        if z1.shape != z2.shape:
            raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
        n = z1.shape[0]
        view1, view2 = gather_pool(z1, distributed=True), gather_pool(z2, distributed=True)
        total = view1.features.shape[0]
        own = view1.own_columns(n)
        return contrast(
            torch.cat([z1, z2]),
            torch.cat([view1.features, view2.features]),
            positive_index=torch.cat([own + total, own]),
            exclude_index=torch.cat([own, own + total]),
            temperature=self.temperature,
            distributed=True,
            reduction="mean",
            impl="auto",
        )
