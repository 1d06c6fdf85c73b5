import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qualcl.samplers import LevelBalancedBatchSampler

levels_strategy = st.lists(st.integers(0, 3), min_size=8, max_size=80).filter(lambda xs: len(set(xs)) == 4)


@given(levels_strategy, st.integers(1, 3), st.integers(0, 1000), st.booleans())
def test_every_batch_has_each_level_and_no_repeats(levels, per_level, seed, replacement):
    counts = [levels.count(v) for v in range(4)]
    if min(counts) < per_level and not replacement:
        with pytest.raises(ValueError, match="per_level"):
            LevelBalancedBatchSampler(levels, per_level, seed=seed)
        return
    sampler = LevelBalancedBatchSampler(levels, per_level, seed=seed, replacement=replacement)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert sorted(levels[i] for i in batch) == sorted(list(range(4)) * per_level)
    if not replacement:
        flat = [i for batch in batches for i in batch]
        assert len(flat) == len(set(flat))


@given(levels_strategy, st.integers(1, 2), st.integers(2, 3), st.integers(0, 100))
def test_ranks_are_disjoint_and_seeded(levels, per_level, replicas, seed):
    if min(levels.count(v) for v in range(4)) < per_level:
        return
    parts = [
        list(LevelBalancedBatchSampler(levels, per_level, seed=seed, num_replicas=replicas, rank=r))
        for r in range(replicas)
    ]
    assert len({len(p) for p in parts}) == 1
    flat = [i for part in parts for batch in part for i in batch]
    assert len(flat) == len(set(flat))
    again = list(LevelBalancedBatchSampler(levels, per_level, seed=seed, num_replicas=replicas, rank=0))
    assert again == parts[0]


def test_set_epoch_changes_the_order():
    levels = [0, 1, 2, 3] * 10
    sampler = LevelBalancedBatchSampler(levels, 2, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_bad_inputs():
    with pytest.raises(ValueError, match="level 2 has no samples"):
        LevelBalancedBatchSampler([0, 1, 3, 3], 1)
    with pytest.raises(ValueError, match="per_level"):
        LevelBalancedBatchSampler([0, 1], 0)
    with pytest.raises(ValueError, match="levels is empty"):
        LevelBalancedBatchSampler([], 1)
    with pytest.raises(ValueError, match="rank"):
        LevelBalancedBatchSampler([0, 1], 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_levels"):
        LevelBalancedBatchSampler(torch.tensor([0, 5]), 1, num_levels=4)
