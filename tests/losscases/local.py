"""Local discrimination's losses: patch discrimination and mixup consistency (``two_view``), region discrimination
(``clustering``)."""

from __future__ import annotations

import torch

from losscases._case import LossCase
from qualcl.losses import MixupConsistencyLoss, PatchDiscriminationLoss, RegionDiscriminationLoss


def _two_views(g: torch.Generator) -> list[torch.Tensor]:
    view1 = torch.randn(8, 5, generator=g, dtype=torch.float64)
    return [view1, view1 + 0.5 * torch.randn(8, 5, generator=g, dtype=torch.float64)]


def _regions(g: torch.Generator) -> list[torch.Tensor]:
    embeddings = torch.randn(8, 4, 3, 3, generator=g, dtype=torch.float64)
    return [embeddings, torch.softmax(2 * torch.randn(8, 3, 3, 3, generator=g, dtype=torch.float64), dim=1)]


CASES = [
    LossCase(
        "patch_discrimination",
        PatchDiscriminationLoss,
        lambda **kw: PatchDiscriminationLoss(temperature=0.5, block_size=3, **kw),
        _two_views,
        lambda loss, rows, w: loss(rows[0], rows[1], weights=w),
    ),
    LossCase(
        "mixup_consistency",
        MixupConsistencyLoss,
        lambda **kw: MixupConsistencyLoss(temperature=0.5, **kw),
        _two_views,
        lambda loss, rows, w: loss(rows[0], rows[1], weights=w),
    ),
    LossCase(
        "region_discrimination",
        RegionDiscriminationLoss,
        lambda **kw: RegionDiscriminationLoss(temperature=0.2, **kw),
        _regions,
        lambda loss, rows, w: loss(rows[0], rows[1], weights=w),
    ),
]
