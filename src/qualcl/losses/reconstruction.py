"""``MaskedReconstructionLoss``: MAE's masked-patch MSE on the loss protocol."""

from __future__ import annotations

import torch
from torch import Tensor

from qualcl._validation import check_choice
from qualcl.functional.patches import patch_errors
from qualcl.losses.base import Loss

__all__ = ["MaskedReconstructionLoss"]


class MaskedReconstructionLoss(Loss):
    r"""MAE's per-patch mean squared error over the removed patches (or over all patches).

    .. math::
        \mathcal L = \frac{\sum_{n,l} w_n m_{nl}\,\tfrac{1}{P}\lVert \hat x_{nl} - t_{nl}\rVert^2}
        {\sum_{n,l} w_n m_{nl}}

    with ``t`` the target patches, standardised per patch when ``norm_pix_loss`` (MAE's option);
    ``loss_on="all"`` averages over every patch instead (the whole-image MSE of the multimodal
    fundus paper's Eq. 4). Without ``weights`` this is :func:`qualcl.functional.masked_reconstruction_loss`
    and MAE's ``forward_loss``. The mask may hold soft weights (finite, ``>= 0``).

    A per-sample loss (family ``prediction``): the anchors are the images, weighted by ``weights``
    ``(N,)``; the mean is over *patches* (an image counts with its mask's sum), ``"sum"`` sums the
    patches' losses and ``"none"`` returns each image's weighted patch sum ``(N,)``. With
    ``gather_distributed=True`` under ``torch.distributed`` the mask sum is summed across ranks, so
    ranks masking different numbers of patches give the one-process mean; without it each rank
    takes its own mean and DDP averages those.

    Args:
        norm_pix_loss: Standardise each target patch by its own mean and variance (MAE: off by
            default, on in its best configurations).
        loss_on: ``"masked"`` (MAE) or ``"all"``.
        reduction: ``"mean"`` (over patches), ``"sum"`` or ``"none"`` (per image).
        gather_distributed: Take the mean over the patches of every rank.

    Shape:
        - input: ``(N, L, p·p·C)`` predicted patches; target: ``(N, L, p·p·C)`` = ``patchify(images, p)``;
          mask: ``(N, L)``, 1 = removed; weights: ``(N,)``.
        - Output: scalar, or ``(N,)`` with ``reduction="none"``.

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

    family = "prediction"
    batch_global = False

    def __init__(
        self,
        norm_pix_loss: bool = False,
        loss_on: str = "masked",
        reduction: str = "mean",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, gather_distributed=gather_distributed)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.loss_on = check_choice("loss_on", loss_on, ("masked", "all"))

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"norm_pix_loss={self.norm_pix_loss}, loss_on={self.loss_on!r}, {self.protocol_repr()}"

    def forward(self, input: Tensor, target: Tensor, mask: Tensor, *, weights: Tensor | None = None) -> Tensor:
        """Compute the loss; see the class docstring for shapes."""
        per_patch = patch_errors(
            input, target, mask, norm_pix_loss=self.norm_pix_loss, names=("input", "target", "mask")
        )
        weights = self.checked_weights(weights, input.shape[0], input.device)
        m = torch.ones_like(per_patch) if self.loss_on == "all" else mask.detach().to(per_patch.dtype)
        patches = m.sum(dim=1)
        if self.loss_on == "masked" and not self.distributed and float(patches.sum()) <= 0:
            raise ValueError("mask removes no patch, so the masked-patch loss is undefined; use loss_on='all'")
        per_image = (per_patch * m).sum(dim=1) / patches.clamp_min(torch.finfo(per_patch.dtype).tiny)
        return self.reduce(per_image, weights, counted=patches)
