"""``LevelBalancedBatchSampler``: every batch holds ``b`` rows of each level (CoMCL's 4-way batch)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from qualcl._validation import check_int, check_integer_tensor
from qualcl.samplers._ranks import RankAware

__all__ = ["LevelBalancedBatchSampler"]


class LevelBalancedBatchSampler(RankAware, Sampler[list[int]]):
    """Batches of ``per_level`` indices from each level, seeded, disjoint across DDP ranks.

    Each epoch shuffles every level's indices with ``torch.Generator().manual_seed(seed + epoch)``
    (identical on all ranks), cuts them into chunks of ``per_level`` and zips one chunk per level
    into a batch, so a batch is ``[level 0 rows..., level 1 rows..., ...]`` and no index repeats
    within an epoch. There are ``min_level_count // per_level`` batches (``drop_last``); with
    ``replacement=True`` smaller levels are re-shuffled and repeated up to the largest level's
    count (at least one batch, repeating rows when even the largest level is smaller than
    ``per_level``). Batch ``j`` goes to rank ``j % num_replicas``, truncated so every rank has as many.
    Call :meth:`set_epoch` each epoch.

    Args:
        levels: Level id of each dataset index (e.g. 0 = L, 1 = LQ_L, 2 = H, 3 = LQ_H).
        per_level: Rows per level in a batch (CoMCL: 100, i.e. a batch of 400).
        num_levels: Number of levels that must all be present (default ``max(levels) + 1``).
        replacement: Repeat smaller levels instead of truncating to the smallest.
        seed: Shared seed (must be equal on all ranks).
        num_replicas: DDP world size (default: from ``torch.distributed`` at iteration time, else 1), so
            the sampler can be built before the process group exists.
        rank: This process's rank (default: likewise, else 0).

    Examples:
        >>> levels = [0, 1, 2, 3] * 4
        >>> sampler = LevelBalancedBatchSampler(levels, per_level=2, seed=0)
        >>> len(sampler)
        2
        >>> sorted(levels[i] for i in next(iter(sampler)))
        [0, 0, 1, 1, 2, 2, 3, 3]

    Reference:
        CoMCL (Hou et al., MICCAI 2024): balanced batches of the four levels L, LQ_L, H, LQ_H.
    """

    def __init__(
        self,
        levels: Sequence[int] | torch.Tensor,
        per_level: int,
        *,
        num_levels: int | None = None,
        replacement: bool = False,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        raw = levels if isinstance(levels, torch.Tensor) else torch.as_tensor(list(levels))
        if raw.numel() == 0:
            raise ValueError("levels is empty")
        if raw.ndim != 1:
            raise ValueError(f"levels must be a 1-D sequence of level ids, got shape {tuple(raw.shape)}")
        ids = check_integer_tensor("levels", raw, what="level ids")  # 0.5 is refused, never truncated to 0
        if bool((ids < 0).any()):
            raise ValueError(f"levels must be non-negative integer ids, got {int(ids.min())}")
        check_int("per_level", per_level)
        count = int(ids.max()) + 1 if num_levels is None else check_int("num_levels", num_levels)
        if bool((ids >= count).any()):
            raise ValueError(f"levels holds ids >= num_levels={count}")
        self.indices = [torch.nonzero(ids == level).flatten() for level in range(count)]
        for level, members in enumerate(self.indices):
            if members.numel() == 0:
                raise ValueError(f"level {level} has no samples: every batch needs {per_level} of it")
            if members.numel() < per_level and not replacement:
                raise ValueError(
                    f"level {level} has {members.numel()} samples, fewer than per_level={per_level}; "
                    "lower per_level or pass replacement=True"
                )
        self.per_level = per_level
        self.replacement = replacement
        self.seed = seed
        self.epoch = 0
        self._set_world(num_replicas, rank)

    def set_epoch(self, epoch: int) -> None:
        """Use a new shuffle for ``epoch`` (same on every rank)."""
        self.epoch = epoch

    def _global_batch_count(self) -> int:
        sizes = [m.numel() for m in self.indices]
        if self.replacement:
            return max(1, max(sizes) // self.per_level)
        return min(sizes) // self.per_level

    def __len__(self) -> int:
        return self._global_batch_count() // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self._global_batch_count() * self.per_level
        shuffled = []
        for members in self.indices:
            repeats = -(-total // members.numel())
            order = torch.cat([torch.randperm(members.numel(), generator=generator) for _ in range(repeats)])
            shuffled.append(members[order[:total]].view(-1, self.per_level))
        batches = torch.cat(shuffled, dim=1)
        world, me = self.num_replicas, self.rank
        usable = len(self) * world
        for batch in batches[me:usable:world]:
            yield batch.tolist()
