"""Two-view losses (family ``two_view``): InfoNCE in its forms, NT-Xent, multi-level InfoNCE."""

from __future__ import annotations

import torch

from losscases._case import LossCase
from qualcl.losses import InfoNCE, MultiLevelInfoNCE, NTXentLoss


def _views(g: torch.Generator, n: int = 8, d: int = 6) -> list[torch.Tensor]:
    return [torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)]


def _views_labels(g: torch.Generator) -> list[torch.Tensor]:
    return [*_views(g), torch.tensor([0, 1, 1, 2, 0, 2, 1, 0])]


def _views_bank(g: torch.Generator) -> list[torch.Tensor]:
    return [*_views(g), torch.randn(16, 6, generator=g, dtype=torch.float64)]


def _levels(g: torch.Generator) -> list[torch.Tensor]:
    return [*_views(g, n=16), torch.arange(4).repeat(4)]


CASES = [
    LossCase(
        "info_nce_in_batch",
        InfoNCE,
        lambda **kw: InfoNCE(temperature=0.2, **kw),
        _views,
        lambda loss, rows, w: loss(rows[0], rows[1], weights=w),
    ),
    LossCase(
        "info_nce_bank_top_k",
        InfoNCE,
        lambda **kw: InfoNCE(temperature=0.3, **kw),
        _views_bank,
        lambda loss, rows, w: loss(rows[0], rows[1], rows[2], top_k=4, weights=w),
    ),
    LossCase(
        "info_nce_supcon",
        InfoNCE,
        lambda **kw: InfoNCE(temperature=0.3, **kw),
        _views_labels,
        lambda loss, rows, w: loss(rows[0], labels=rows[2], weights=w),
    ),
    LossCase(
        "nt_xent",
        NTXentLoss,
        lambda **kw: NTXentLoss(temperature=0.5, **kw),
        _views,
        lambda loss, rows, w: loss(rows[0], rows[1], weights=w),
    ),
    LossCase(
        "multi_level",
        MultiLevelInfoNCE,
        lambda **kw: MultiLevelInfoNCE(temperature=0.2, **kw),
        _levels,
        lambda loss, rows, w: loss(rows[0], rows[1], rows[2], weights=w),
        mean_from_none=None,  # a sum of per-pair means
    ),
]
