"""MKCNet recipe: quality-aware diagnosis with a meta-learned knowledge co-embedding (Che et al., CVPR 2023)."""

from __future__ import annotations

from collections.abc import Sequence

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


def mkcnet_config(
    preset: str = "default",
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
) -> MkcnetConfig:
    """``MKCNET.config(...)``: preset ← the dataset's settings (:data:`DATASETS`) ← arguments ← overrides.

    Example:
        >>> config = mkcnet_config("paper", dataset="drac", data_dir="DRAC2022")
        >>> config.data.channels, config.model.slice_length, config.train.epochs, config.train.meta_lr
        (1, 10, 200, 0.01)
    """
    return MKCNET.config(preset, dataset=dataset, data_dir=data_dir, overrides=overrides, seed=seed)
