"""Generalised-mean (GeM) pooling of feature maps (Radenović et al., TPAMI 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qualcl._validation import check_feature_map, check_positive

__all__ = ["GeM"]


class GeM(nn.Module):
    r"""Generalised-mean pooling: ``(mean_{hw} max(x, eps)^p)^{1/p}`` per channel.

    .. math::
        f_c = \Big(\frac{1}{HW} \sum_{h, w} \max(x_{chw}, \epsilon)^{p}\Big)^{1/p}

    ``p = 1`` is average pooling; ``p → ∞`` approaches max pooling. With ``learnable=True`` the
    exponent is a ``(1,)`` parameter trained with the network (as in cnnimageretrieval-pytorch and
    the public FundusDR code), else a fixed buffer. The clamp makes the pooled values positive, so
    GeM descriptors of any map have positive cosine similarities with each other.

    GeM is positively homogeneous, ``f(s·x) = s·f(x)``, so each channel is computed as
    ``m · f(x / m)`` with ``m`` its (detached) maximum: the same value and the same gradients
    (with respect to ``x`` and ``p``), but the mean of ``(x / m)^p`` lies in ``[1/HW, 1]``, so it
    neither overflows nor vanishes for large ``p`` or in low precision. (timm 1.0 has no GeM
    layer, so qualcl carries this one.)

    Args:
        p: Initial exponent ``> 0`` (3 in both codes).
        learnable: Train ``p``.
        eps: Lower clamp of the activations ``> 0``.

    Shape:
        - Input ``(N, C, H, W)``; output ``(N, C)`` in the input's dtype.

    Examples:
        >>> import torch
        >>> x = torch.rand(2, 8, 4, 5)
        >>> GeM(p=3.0)(x).shape
        torch.Size([2, 8])
        >>> torch.allclose(GeM(p=1.0, learnable=False)(x), x.mean(dim=(2, 3)))
        True

    Reference:
        Radenović, Tolias and Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation",
        TPAMI 2018; Fang et al., "Deep metric learning with mirror attention and fine triplet loss
        for fundus image retrieval in ophthalmology", BSPC 2023.
    """

    p: Tensor

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        value = torch.full((1,), check_positive("p", p))
        self.learnable = bool(learnable)
        if self.learnable:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = check_positive("eps", eps)

    def extra_repr(self) -> str:
        """Current exponent and settings."""
        return f"p={float(self.p.detach()[0]):.4f}, learnable={self.learnable}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``(N, C, H, W)`` to ``(N, C)``."""
        check_feature_map("x", x)
        p = self.p.to(x.dtype)
        z = x.clamp(min=self.eps)
        top = z.detach().amax(dim=(2, 3), keepdim=True)  # >= eps > 0
        pooled: Tensor = (z / top).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
        return pooled * top[:, :, 0, 0]
