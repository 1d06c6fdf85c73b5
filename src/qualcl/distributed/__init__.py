"""Distributed helpers: one audited all-gather with exact gradients, rank/world queries, synchronised BatchNorm."""

from qualcl.distributed.batchnorm import (
    SyncBatchNorm,
    all_reduce_sum,
    convert_sync_batchnorm,
    revert_sync_batchnorm,
)
from qualcl.distributed.gather import (
    gather_no_grad,
    gather_with_grad,
    is_distributed,
    rank,
    world_size,
)

__all__ = [
    "SyncBatchNorm",
    "all_reduce_sum",
    "convert_sync_batchnorm",
    "gather_no_grad",
    "gather_with_grad",
    "is_distributed",
    "rank",
    "revert_sync_batchnorm",
    "world_size",
]
