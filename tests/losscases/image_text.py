"""Image–text losses (family ``image_text``): SigLIP."""

from __future__ import annotations

import torch

from losscases._case import LossCase
from qualcl.losses.siglip import SigLipLoss


def _pairs(g: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)]


CASES = [
    LossCase(
        "siglip",
        SigLipLoss,
        lambda **kw: SigLipLoss(learnable=False, init_logit_scale=3.0, init_logit_bias=-2.0, **kw),
        _pairs,
        lambda loss, rows, w: loss(rows[0], rows[1], weights=w),
    ),
    LossCase(
        "siglip_streaming",
        SigLipLoss,
        lambda **kw: SigLipLoss(impl="torch", chunk_size=2, column_chunk_size=3, normalize=False, **kw),
        _pairs,
        lambda loss, rows, w: loss(rows[0], rows[1], torch.tensor(0.7, dtype=torch.float64), 1.5, weights=w),
    ),
]
