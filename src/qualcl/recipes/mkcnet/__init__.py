"""MKCNet recipe: quality-aware diagnosis with a meta-learned knowledge co-embedding (Che et al., CVPR 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qualcl.recipes._cli import lazy_exports
from qualcl.recipes.mkcnet.config import (
    ABLATIONS,
    DATASETS,
    LQ_SWEEP,
    PRESETS,
    SWEEP_BASES,
    DataConfig,
    DatasetSettings,
    MkcnetConfig,
    ModelConfig,
    TrainConfig,
    sweep_name,
)

if TYPE_CHECKING:
    from qualcl.recipes.mkcnet.model import TaskNet, TaskOutput, build_meta_learner, build_task_net
    from qualcl.recipes.mkcnet.modules import MkcnetTraining
    from qualcl.recipes.mkcnet.recipe import MKCNET, MkcnetData, MkcnetRecipe, run_ablation, run_mkcnet

    #: ``MKCNET.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← the dataset's
    #: settings (:data:`DATASETS`) ← arguments ← overrides.
    mkcnet_config = MKCNET.config

__all__ = [
    "ABLATIONS",
    "DATASETS",
    "LQ_SWEEP",
    "MKCNET",
    "PRESETS",
    "SWEEP_BASES",
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
    "build_meta_learner",
    "build_task_net",
    "mkcnet_config",
    "run_ablation",
    "run_mkcnet",
    "sweep_name",
]

# The models, data and recipe (torch, Lightning) are imported on first use, so that importing this package
# for its config (``qualcl run NAME --help``) stays quick; type checkers read the imports above instead.
if not TYPE_CHECKING:  # the names of the TYPE_CHECKING block above
    __getattr__, __dir__ = lazy_exports(__name__)
