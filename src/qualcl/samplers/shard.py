"""``ShardedShuffleSampler``: a seeded per-epoch shuffle split across DDP ranks, resolved when iterated."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from qualcl.samplers._ranks import RankAware

__all__ = ["ShardSampler", "ShardedShuffleSampler"]


class ShardedShuffleSampler(RankAware, Sampler[int]):
    """Indices ``0..n-1``, shuffled per epoch with ``seed``, rank ``r`` of ``W`` taking positions ``r, r+W, …``.

    Like :class:`torch.utils.data.DistributedSampler`, every rank gets the same number of indices
    (``ceil(n / W)``, the order wrapped around to fill the last round; ``drop_last`` cuts to
    ``floor(n / W)`` instead), so ranks stay in step. Unlike it, the world size and rank are read
    when the sampler is iterated (unless given), so it can be built before the process group
    exists, and the order is a pure function of ``(seed, epoch)``: a resumed epoch repeats exactly.
    Call :meth:`set_epoch` each epoch.

    Args:
        n: Number of items.
        shuffle: Shuffle (else the items in order, for evaluation).
        seed: Seed of the shuffles (equal on every rank).
        drop_last: Drop the tail instead of wrapping around.
        num_replicas: World size (default: from ``torch.distributed`` at iteration time, else 1).
        rank: This process's rank (default: likewise, else 0).

    Examples:
        >>> sampler = ShardedShuffleSampler(5, seed=0, num_replicas=2, rank=1)
        >>> len(sampler), sorted(set(ShardedShuffleSampler(5, num_replicas=1)))
        (3, [0, 1, 2, 3, 4])
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self._set_world(num_replicas, rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        world = self.num_replicas
        return self.n // world if self.drop_last else -(-self.n // world)

    def __iter__(self) -> Iterator[int]:
        world, me = self.num_replicas, self.rank
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        total = len(self) * world
        while len(order) < total:  # wrap around so every rank gets as many
            order += order[: total - len(order)]
        yield from order[me:total:world]


class ShardSampler(RankAware, Sampler[int]):
    """Evaluation order across DDP ranks: rank ``r`` of ``W`` takes items ``r, r + W, …`` (no padding, no shuffle).

    Every item is seen exactly once over all ranks, so predictions gathered from every rank are the
    whole set — never duplicated (as padding would) nor averaged per rank. World size and rank are
    read when iterated unless given.

    Args:
        n: Number of items (at least the world size: every rank must have one).
        num_replicas: World size (default: from ``torch.distributed``, else 1).
        rank: This process's rank (default: likewise, else 0).

    Examples:
        >>> list(ShardSampler(5, num_replicas=2, rank=1))
        [1, 3]
    """

    def __init__(self, n: int, *, num_replicas: int | None = None, rank: int | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        self.n = n
        self._set_world(num_replicas, rank)

    def _shard(self) -> range:
        world, me = self.num_replicas, self.rank
        if self.n < world:
            raise ValueError(f"{self.n} items cannot be shared by {world} processes: every rank needs one")
        return range(me, self.n, world)

    def __len__(self) -> int:
        return len(self._shard())

    def __iter__(self) -> Iterator[int]:
        yield from self._shard()
