"""Samplers and miners: which rows, patches and negatives a step sees."""

from qualcl.samplers.balanced import LevelBalancedBatchSampler
from qualcl.samplers.patches import LesionPatchSampler, RandomPatchSampler, Window
from qualcl.samplers.schedule import CosineCountSchedule
from qualcl.samplers.self_paced import MinerStats, SelfPacedHardNegativeMiner
from qualcl.samplers.shard import ShardedShuffleSampler, ShardSampler

__all__ = [
    "CosineCountSchedule",
    "LesionPatchSampler",
    "LevelBalancedBatchSampler",
    "MinerStats",
    "RandomPatchSampler",
    "SelfPacedHardNegativeMiner",
    "ShardSampler",
    "ShardedShuffleSampler",
    "Window",
]
