"""Metric-family losses (``embeddings, labels, indices_tuple, ref_emb, ref_labels``): circle, fine triplet.

Every anchor has a positive and a negative (labels cycle through three classes), so every anchor
counts and ``reduction="mean"`` is the weighted mean of ``"none"``. ``aggregate="global"`` refuses
per-anchor weights, so the cases use ``aggregate="per_anchor"``; the global form's DDP equality is
tested in ``tests/losses/test_circle.py``.
"""

from __future__ import annotations

import torch

from losscases._case import LossCase
from qualcl.losses import CircleLoss, FineTripletLoss

f64 = torch.float64


def _own_rows(g: torch.Generator) -> list[torch.Tensor]:
    """The batch is its own reference: ``embeddings (16, 6)``, ``labels (16,)``."""
    return [torch.randn(16, 6, generator=g, dtype=f64), torch.arange(16) % 3]


def _ref_rows(g: torch.Generator) -> list[torch.Tensor]:
    """A separate reference set: ``embeddings (16, 6)``, ``labels``, ``ref_emb (12, 6)``, ``ref_labels``."""
    return [
        torch.randn(16, 6, generator=g, dtype=f64),
        torch.arange(16) % 3,
        torch.randn(12, 6, generator=g, dtype=f64),
        torch.arange(12) % 3,
    ]


def _descriptor_rows(g: torch.Generator) -> list[torch.Tensor]:
    """Non-negative mirror descriptors ``(16, 8)`` (two halves of 4) and labels."""
    return [torch.rand(16, 8, generator=g, dtype=f64) + 0.05, torch.arange(16) % 3]


def _descriptor_ref_rows(g: torch.Generator) -> list[torch.Tensor]:
    return [*_descriptor_rows(g), torch.rand(12, 8, generator=g, dtype=f64) + 0.05, torch.arange(12) % 3]


def _own(loss, rows, w):
    return loss(rows[0], rows[1], weights=w)


def _ref(loss, rows, w):
    return loss(rows[0], rows[1], ref_emb=rows[2], ref_labels=rows[3], weights=w)


CASES = [
    LossCase("circle", CircleLoss, lambda **kw: CircleLoss(m=0.25, gamma=16.0, **kw), _own_rows, _own),
    LossCase(
        "circle_ref_streamed",
        CircleLoss,
        lambda **kw: CircleLoss(m=0.4, gamma=8.0, chunk_size=5, **kw),
        _ref_rows,
        _ref,
    ),
    LossCase(
        "circle_streamed",  # blocks of 3 columns: the self pairs by global index inside the streamed path
        CircleLoss,
        lambda **kw: CircleLoss(m=0.25, gamma=16.0, detach_alpha=False, chunk_size=3, **kw),
        _own_rows,
        _own,
    ),
    LossCase(
        "fine_triplet",
        FineTripletLoss,
        lambda **kw: FineTripletLoss(scale=8.0, aggregate="per_anchor", **kw),
        _descriptor_rows,
        _own,
    ),
    LossCase(
        "fine_triplet_ref_symmetric",
        FineTripletLoss,
        lambda **kw: FineTripletLoss(scale=8.0, relevance="symmetric", aggregate="per_anchor", chunk_size=4, **kw),
        _descriptor_ref_rows,
        _ref,
    ),
]
