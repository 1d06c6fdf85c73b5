"""MKCNet recipe (seed 001): quality-aware diagnosis with a meta-learned knowledge co-embedding."""

from qualcl.recipes.mkcnet.ablation import ablation_table, ablation_variants, run_ablation, variant_config
from qualcl.recipes.mkcnet.config import (
    ABLATIONS,
    DATASETS,
    LQ_SWEEP,
    PRESETS,
    DataConfig,
    DatasetSettings,
    MkcnetConfig,
    ModelConfig,
    TrainConfig,
    mkcnet_config,
)
from qualcl.recipes.mkcnet.model import TaskNet, TaskOutput, build_meta_learner, build_task_net
from qualcl.recipes.mkcnet.modules import MkcnetTraining
from qualcl.recipes.mkcnet.pipeline import run_mkcnet

__all__ = [
    "ABLATIONS",
    "DATASETS",
    "LQ_SWEEP",
    "PRESETS",
    "DataConfig",
    "DatasetSettings",
    "MkcnetConfig",
    "MkcnetTraining",
    "ModelConfig",
    "TaskNet",
    "TaskOutput",
    "TrainConfig",
    "ablation_table",
    "ablation_variants",
    "build_meta_learner",
    "build_task_net",
    "mkcnet_config",
    "run_ablation",
    "run_mkcnet",
    "variant_config",
]
