"""Rank-aware samplers: every item once across ranks, ranks in step, a pure function of (seed, epoch)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qualcl.recipes.mkcnet.data import TwoPassBatchSampler
from qualcl.samplers import LevelBalancedBatchSampler, ShardedShuffleSampler, ShardSampler


@given(st.integers(1, 60), st.integers(1, 5))
def test_shard_sampler_covers_every_item_exactly_once(n, world):
    if n < world:
        with pytest.raises(ValueError, match="every rank needs one"):
            list(ShardSampler(n, num_replicas=world, rank=0))
        return
    shards = [list(ShardSampler(n, num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert [len(ShardSampler(n, num_replicas=world, rank=r)) for r in range(world)] == [len(s) for s in shards]


@given(st.integers(1, 60), st.integers(1, 5), st.integers(0, 100), st.integers(0, 5), st.booleans())
def test_sharded_shuffle_keeps_ranks_in_step_and_covers_the_epoch(n, world, seed, epoch, drop_last):
    samplers = [
        ShardedShuffleSampler(n, seed=seed, drop_last=drop_last, num_replicas=world, rank=r) for r in range(world)
    ]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    shards = [list(s) for s in samplers]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(samplers[0])
    seen = [i for shard in shards for i in shard]
    if drop_last:
        assert len(set(seen)) == len(seen) == (n // world) * world
    else:
        assert set(seen) == set(range(n))  # wrapped around: a few items twice, none missing
    again = ShardedShuffleSampler(n, seed=seed, drop_last=drop_last, num_replicas=world, rank=0)
    again.set_epoch(epoch)
    assert list(again) == shards[0]  # a resumed epoch repeats exactly


def test_sharded_shuffle_changes_with_the_epoch_and_checks_arguments():
    sampler = ShardedShuffleSampler(50, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(50))
    assert list(ShardedShuffleSampler(4, shuffle=False)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="n must be a positive integer"):
        ShardedShuffleSampler(0)
    with pytest.raises(ValueError, match="rank must lie"):
        list(ShardedShuffleSampler(4, num_replicas=2, rank=2))


@given(st.integers(4, 40), st.integers(2, 6), st.integers(1, 3), st.integers(0, 3))
def test_two_pass_sampler_gives_ranks_disjoint_batches_of_the_same_pass(n, batch, world, epoch):
    samplers = [TwoPassBatchSampler(n, batch, 2, seed=3, num_replicas=world, rank=r) for r in range(world)]
    if TwoPassBatchSampler(n, batch, 2, seed=3).batches_per_pass < world:
        with pytest.raises(ValueError, match="cannot be shared"):
            len(samplers[0])
        return
    for sampler in samplers:
        sampler.set_epoch(epoch)
    per_rank = [list(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1
    for position in range(len(per_rank[0])):
        passes = {min(i // n for i in batches[position]) for batches in per_rank}
        assert len(passes) == 1  # every rank is in the same pass at every step
    for p in range(2):
        items = [i for batches in per_rank for b in batches for i in b if i // n == p]
        assert len(items) == len(set(items))  # disjoint across ranks within a pass
    single = TwoPassBatchSampler(n, batch, 2, seed=3)
    single.set_epoch(epoch)
    if world == 1:
        assert per_rank[0] == list(single)


def test_level_balanced_sampler_reads_the_world_when_iterated(monkeypatch):
    import qualcl.samplers._ranks as ranks

    levels = [0, 1] * 8
    sampler = LevelBalancedBatchSampler(levels, per_level=2, seed=0)  # built before any process group
    assert len(sampler) == 4
    monkeypatch.setattr(ranks, "world_size", lambda: 2)
    monkeypatch.setattr(ranks, "current_rank", lambda: 1)
    assert sampler.num_replicas == 2 and sampler.rank == 1 and len(sampler) == 2
    rank0 = LevelBalancedBatchSampler(levels, per_level=2, seed=0, num_replicas=2, rank=0)
    assert not {i for b in rank0 for i in b} & {i for b in sampler for i in b}
