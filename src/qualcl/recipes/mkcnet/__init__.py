"""MKCNet recipe: quality-aware diagnosis with a meta-learned knowledge co-embedding (Che et al., CVPR 2023)."""

from __future__ import annotations

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
)
from qualcl.recipes.mkcnet.model import TaskNet, TaskOutput, build_meta_learner, build_task_net
from qualcl.recipes.mkcnet.modules import MkcnetTraining
from qualcl.recipes.mkcnet.recipe import MKCNET, MkcnetData, MkcnetRecipe, run_mkcnet

__all__ = [
    "ABLATIONS",
    "DATASETS",
    "LQ_SWEEP",
    "MKCNET",
    "PRESETS",
    "DataConfig",
    "DatasetSettings",
    "MkcnetConfig",
    "MkcnetData",
    "MkcnetRecipe",
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


#: ``MKCNET.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← the dataset's
#: settings (:data:`DATASETS`) ← arguments ← overrides.
mkcnet_config = MKCNET.config
