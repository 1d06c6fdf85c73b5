"""Exact mid-epoch resume: a training loader that Lightning can stop and restart at any batch.

Lightning saves a loader's ``state_dict()`` in its checkpoints and hands it back to
``load_state_dict()`` before iterating again (its resumable-loader protocol). A loader here records
where the epoch stood — the epoch and the batches whose update was applied — and, on a resume,
leaves out those batches of the *same* epoch, so a run interrupted anywhere continues with exactly
the batches an uninterrupted run would see next. Combined with samplers and datasets whose draws are
functions of ``(seed, epoch, index)`` (every qualcl recipe's), the resumed run is the uninterrupted one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

from torch.utils.data import DataLoader, Sampler

__all__ = ["ResumableLoader", "SkippableBatches"]


class SkippableBatches(Sampler[Any]):
    """A batch sampler whose next iteration leaves out its first ``skip`` batches (then none).

    ``set_epoch`` is passed on to the wrapped sampler (and, for a ``BatchSampler``, to its sampler).

    Args:
        batches: The batch sampler to wrap.
    """

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches = batches
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed the wrapped sampler for ``epoch``."""
        for target in (self.batches, getattr(self.batches, "sampler", None)):
            if target is not None and hasattr(target, "set_epoch"):
                target.set_epoch(epoch)

    def __len__(self) -> int:
        assert isinstance(self.batches, Sized)
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.batches), skip, None)


class ResumableLoader(DataLoader[Any]):
    """A copy of ``loader`` (same dataset, batches, collation, workers) that resumes mid-epoch exactly.

    Every iteration first calls ``set_epoch(epoch)`` on the sampler and the dataset (when they have
    one) with the trainer's current epoch, so a resumed epoch draws what the uninterrupted one drew
    (Lightning may start iterating before ``on_train_epoch_start`` callbacks run).

    Args:
        loader: A map-style loader: with a batch sampler (``batch_size`` or ``batch_sampler`` set),
            whose batches are skipped on resume, or with ``batch_size=None`` (items are batches).
        position: Returns ``(epoch, batches of it whose update was applied)`` — the trainer's counters.
    """

    def __init__(self, loader: DataLoader[Any], position: Callable[[], tuple[int, int]]) -> None:
        # with automatic batching the batch sampler's batches are skipped; without it (batch_size=None,
        # each item already a batch) the sampler's items are
        batched = loader.batch_sampler is not None
        source: Iterable[Any] = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
        self.skippable = SkippableBatches(source)
        super().__init__(
            loader.dataset,
            batch_size=1 if batched else None,  # 1: DataLoader's value for "given by batch_sampler"
            sampler=None if batched else self.skippable,
            batch_sampler=self.skippable if batched else None,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
            prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
            persistent_workers=loader.persistent_workers,
        )
        self.position = position
        self.resumed_at: tuple[int, int] | None = None

    def __iter__(self) -> Any:
        """Iterate the current epoch: sampler and dataset are reseeded for it first, whatever the hook order."""
        epoch = int(self.position()[0])
        self.skippable.set_epoch(epoch)
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "done"}``: where training stands."""
        epoch, done = self.position()
        return {"epoch": int(epoch), "done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Leave out the saved epoch's applied batches on the next iteration (none when it was complete)."""
        epoch, done = int(state["epoch"]), int(state["done"])
        self.resumed_at = (epoch, done)
        self.skippable.skip = done if done < len(self.skippable) else 0
