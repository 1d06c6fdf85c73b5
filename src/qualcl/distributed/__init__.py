"""Distributed helpers: one audited all-gather with exact gradients, and rank/world queries."""

from qualcl.distributed.gather import (
    gather_no_grad,
    gather_with_grad,
    is_distributed,
    rank,
    world_size,
)

__all__ = ["gather_no_grad", "gather_with_grad", "is_distributed", "rank", "world_size"]
