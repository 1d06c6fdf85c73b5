"""``MaskedReconstructionLoss``: the stateful wrapper of :func:`qualcl.functional.masked_reconstruction_loss`."""

from __future__ import annotations

from torch import Tensor, nn

from qualcl._validation import check_choice
from qualcl.functional.patches import masked_reconstruction_loss

__all__ = ["MaskedReconstructionLoss"]


class MaskedReconstructionLoss(nn.Module):
    r"""MAE's per-patch mean squared error over the removed patches (or over all patches).

    .. math::
        \mathcal L = \frac{\sum_{n,l} m_{nl}\,\tfrac{1}{P}\lVert \hat x_{nl} - t_{nl}\rVert^2}{\sum_{n,l} m_{nl}}

    with ``t`` the target patches, standardised per patch when ``norm_pix_loss`` (MAE's option);
    ``loss_on="all"`` averages over every patch instead (the whole-image MSE of the multimodal
    fundus paper's Eq. 4). See :func:`qualcl.functional.masked_reconstruction_loss`.

    Args:
        norm_pix_loss: Standardise each target patch by its own mean and variance (MAE: off by
            default, on in its best configurations).
        loss_on: ``"masked"`` (MAE) or ``"all"``.

    Shape:
        - pred: ``(N, L, p·p·C)``; target: ``(N, L, p·p·C)`` = ``patchify(images, p)``; mask: ``(N, L)``, 1 = removed.
        - Output: scalar.

    Examples:
        >>> import torch
        >>> from qualcl.functional import patchify
        >>> from qualcl.losses import MaskedReconstructionLoss
        >>> images = torch.randn(2, 3, 32, 32)
        >>> mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
        >>> MaskedReconstructionLoss()(torch.zeros(2, 4, 768), patchify(images, 16), mask).shape
        torch.Size([])

    Reference:
        He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.
    """

    def __init__(self, norm_pix_loss: bool = False, loss_on: str = "masked") -> None:
        super().__init__()
        self.norm_pix_loss = bool(norm_pix_loss)
        self.loss_on = check_choice("loss_on", loss_on, ("masked", "all"))

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"norm_pix_loss={self.norm_pix_loss}, loss_on={self.loss_on!r}"

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Compute the loss; see the class docstring for shapes."""
        return masked_reconstruction_loss(pred, target, mask, norm_pix_loss=self.norm_pix_loss, loss_on=self.loss_on)
