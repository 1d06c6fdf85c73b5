"""Per-sample losses (family ``prediction``): focal, caption, masked reconstruction."""

from __future__ import annotations

import torch

from losscases._case import LossCase
from qualcl.losses import CaptionLoss, FocalLoss, MaskedReconstructionLoss


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


def _caption_rows(g: torch.Generator) -> list[torch.Tensor]:
    ids = torch.randint(1, 9, (8, 5), generator=g)
    ids[torch.rand(8, 5, generator=g) < 0.3] = 0  # pads: captions of different lengths
    ids[0] = 0  # a caption without any labelled token
    return [torch.randn(8, 5, 9, generator=g, dtype=torch.float64), ids]


def _caption_mean(none: torch.Tensor, weights: torch.Tensor, rows: list[torch.Tensor]) -> torch.Tensor:
    tokens = (rows[1] != 0).sum(dim=1).to(weights.dtype)
    return none.sum() / (weights * tokens).sum()


def _reconstruction_rows(g: torch.Generator) -> list[torch.Tensor]:
    mask = (torch.rand(8, 6, generator=g) < 0.5).to(torch.float64)
    mask[:, 0] = 1.0
    return [
        torch.randn(8, 6, 4, generator=g, dtype=torch.float64),
        torch.randn(8, 6, 4, generator=g, dtype=torch.float64),
        mask,
    ]


def _reconstruction_mean(none: torch.Tensor, weights: torch.Tensor, rows: list[torch.Tensor]) -> torch.Tensor:
    return none.sum() / (weights * rows[2].sum(dim=1)).sum()


CASES += [
    LossCase(
        "caption",
        CaptionLoss,
        lambda **kw: CaptionLoss(pad_id=0, label_smoothing=0.1, **kw),
        _caption_rows,
        lambda loss, rows, w: loss(rows[0], rows[1], weights=w),
        mean_from_none=_caption_mean,
    ),
    LossCase(
        "masked_reconstruction",
        MaskedReconstructionLoss,
        lambda **kw: MaskedReconstructionLoss(norm_pix_loss=True, **kw),
        _reconstruction_rows,
        lambda loss, rows, w: loss(rows[0], rows[1], rows[2], weights=w),
        mean_from_none=_reconstruction_mean,
    ),
]
