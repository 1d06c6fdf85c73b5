"""``FocalLoss``: the stateful wrapper of :func:`qualcl.functional.focal_loss`."""

from __future__ import annotations

from torch import Tensor

from qualcl._validation import check_nonnegative
from qualcl.functional.focal import check_logits, focal_per_sample
from qualcl.losses.base import Loss

__all__ = ["FocalLoss"]


class FocalLoss(Loss):
    r"""Focal loss with hard or soft targets: ``-sum_c y_c (1 - p_c)^gamma log p_c``.

    Equals cross-entropy at ``gamma = 0``. See :func:`qualcl.functional.focal_loss`. A per-sample
    loss (family ``prediction``): with ``gather_distributed=True`` under ``torch.distributed`` the
    mean's denominator (the summed weights, or the sample count) is summed across ranks, so ranks
    with different batch sizes give the one-process mean; without it each rank takes its own mean.

    Args:
        gamma: Focusing parameter ``>= 0`` (MKCNet and MAXL: 2).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        gather_distributed: Take the mean over the samples of every rank.

    Shape:
        - input: ``(N, C)`` logits; target: ``(N,)`` integer or ``(N, C)`` soft; weights: ``(N,)``.
        - Output: scalar, or ``(N,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from qualcl.losses import FocalLoss
        >>> FocalLoss(gamma=2.0)(torch.randn(4, 5), torch.tensor([0, 1, 4, 2])).shape
        torch.Size([])

    Reference:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017; MKCNet (Che et al., CVPR 2023).
    """

    family = "prediction"
    batch_global = False

    def __init__(self, gamma: float = 2.0, reduction: str = "mean", gather_distributed: bool = False) -> None:
        super().__init__(reduction=reduction, gather_distributed=gather_distributed)
        self.gamma = check_nonnegative("gamma", gamma)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"gamma={self.gamma}, {self.protocol_repr()}"

    def forward(self, input: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        """Compute the loss; see the class docstring for shapes."""
        check_logits(input, "input")
        losses = focal_per_sample(input, target, self.gamma)
        return self.reduce(losses, self.checked_weights(weights, losses.shape[0], losses.device))
