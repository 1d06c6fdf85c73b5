"""What the convention tests need to know of one loss: how to build it, its inputs and how to call it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def split_rows(length: int, rank: int, world: int = 2) -> slice:
    """The rows of ``rank`` when ``length`` rows are dealt to ``world`` ranks unequally (3/8 first, the rest after)."""
    if world == 1:
        return slice(0, length)
    first = (3 * length) // 8
    return slice(0, first) if rank == 0 else slice(first, length)


def _default_mean(none: Tensor, weights: Tensor, rows: list[Tensor]) -> Tensor:
    return none.sum() / weights.sum()


@dataclass(frozen=True)
class LossCase:
    """One loss under test.

    Attributes:
        name: Test id.
        loss: The class (its ``family`` and ``batch_global`` are read from it).
        build: ``build(**protocol)`` → the loss, ``protocol`` being ``reduction`` and ``gather_distributed``.
        rows: ``rows(generator)`` → float64 tensors whose first dimension indexes samples; under DDP each
            is dealt to the ranks by :func:`split_rows`. The first holds the anchors: its length is the
            length of ``weights``. Floating tensors get gradients, integer ones (labels) do not.
        call: ``call(loss, rows, weights)`` → the loss value (``weights`` may be ``None``).
        mean_from_none: ``(none, weights, rows)`` → the mean that ``reduction="mean"`` must give,
            computed from ``reduction="none"``; ``None`` when the mean is not a mean of ``none``.
        bad_argument: The argument name an error must carry when the first row tensor holds a NaN
            (default: the family's first argument).
    """

    name: str
    loss: type
    build: Callable[..., Any]
    rows: Callable[[torch.Generator], list[Tensor]]
    call: Callable[[Any, list[Tensor], Tensor | None], Tensor]
    mean_from_none: Callable[[Tensor, Tensor, list[Tensor]], Tensor] | None = field(default=_default_mean)
    bad_argument: str | None = None

    def inputs(self, seed: int = 0) -> list[Tensor]:
        """The global inputs, float64."""
        return self.rows(torch.Generator().manual_seed(seed))
