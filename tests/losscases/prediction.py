"""Per-sample losses (family ``prediction``): focal, caption, masked reconstruction."""

from __future__ import annotations

import torch

from losscases._case import LossCase
from qualcl.losses import FocalLoss


def _focal_rows(g: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(8, 5, generator=g, dtype=torch.float64) * 2, torch.randint(0, 5, (8,), generator=g)]


CASES = [
    LossCase(
        "focal",
        FocalLoss,
        lambda **kw: FocalLoss(gamma=2.0, **kw),
        _focal_rows,
        lambda loss, rows, w: loss(rows[0], rows[1], weights=w),
    ),
]
