"""``FocalLoss``: the stateful wrapper of :func:`qualcl.functional.focal_loss`."""

from __future__ import annotations

from torch import Tensor, nn

from qualcl._validation import check_nonnegative, check_reduction
from qualcl.functional import focal_loss

__all__ = ["FocalLoss"]


class FocalLoss(nn.Module):
    r"""Focal loss with hard or soft targets: ``-sum_c y_c (1 - p_c)^gamma log p_c``.

    Equals cross-entropy at ``gamma = 0``. See :func:`qualcl.functional.focal_loss`.

    Args:
        gamma: Focusing parameter ``>= 0`` (MKCNet and MAXL: 2).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        - logits: ``(N, C)``; target: ``(N,)`` integer or ``(N, C)`` soft; weights: ``(N,)``.
        - Output: scalar, or ``(N,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from qualcl.losses import FocalLoss
        >>> FocalLoss(gamma=2.0)(torch.randn(4, 5), torch.tensor([0, 1, 4, 2])).shape
        torch.Size([])

    Reference:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017; MKCNet (Che et al., CVPR 2023).
    """

    def __init__(self, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        self.gamma = check_nonnegative("gamma", gamma)
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"gamma={self.gamma}, reduction={self.reduction!r}"

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        """Compute the loss; see the class docstring for shapes."""
        return focal_loss(logits, target, gamma=self.gamma, weights=weights, reduction=self.reduction)
