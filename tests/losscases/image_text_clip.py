"""ClipLoss (family ``image_text``), with and without class labels."""

from __future__ import annotations

import torch

from losscases._case import LossCase
from qualcl.losses import ClipLoss


def _pairs(g: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)]


def _pairs_labels(g: torch.Generator) -> list[torch.Tensor]:
    return [*_pairs(g), torch.tensor([0, 1, 1, 2, 0, 2, 1, 0])]


CASES = [
    LossCase(
        "clip",
        ClipLoss,
        lambda **kw: ClipLoss(init_logit_scale=4.0, **kw),
        _pairs,
        lambda loss, rows, w: loss(rows[0], rows[1], weights=w),
    ),
    LossCase(
        "clip_labels_fused",
        ClipLoss,
        lambda **kw: ClipLoss(init_logit_scale=4.0, impl="torch", **kw),
        _pairs_labels,
        lambda loss, rows, w: loss(rows[0], rows[1], labels=rows[2], weights=w),
    ),
]
