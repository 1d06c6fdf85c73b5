"""The DDP world a sampler shares its items with, read when it is iterated unless given."""

from __future__ import annotations

from qualcl.distributed import rank as current_rank
from qualcl.distributed import world_size


class RankAware:
    """``num_replicas`` and ``rank`` properties: the given values, else ``torch.distributed``'s at call time.

    Reading them late lets a sampler be built before the process group exists (Lightning starts it
    inside ``Trainer.fit``).
    """

    _replicas: int | None = None
    _rank: int | None = None

    def _set_world(self, num_replicas: int | None, rank: int | None) -> None:
        if num_replicas is not None and rank is not None and not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, num_replicas={num_replicas}), got {rank}")
        self._replicas, self._rank = num_replicas, rank

    @property
    def num_replicas(self) -> int:
        """World size."""
        return world_size() if self._replicas is None else self._replicas

    @property
    def rank(self) -> int:
        """This process's rank."""
        value = current_rank() if self._rank is None else self._rank
        if not 0 <= value < self.num_replicas:
            raise ValueError(f"rank must lie in [0, num_replicas={self.num_replicas}), got {value}")
        return value
