"""MKCNet recipe: quality-aware diagnosis with a meta-learned knowledge co-embedding (Che et al., CVPR 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qualcl.recipes._cli import lazy_exports
from qualcl.recipes.mkcnet.config import ABLATIONS, DATASETS, MkcnetConfig, ModelConfig, TrainConfig

__all__ = [
    "ABLATIONS",
    "DATASETS",
    "MKCNET",
    "MkcnetConfig",
    "MkcnetTraining",
    "ModelConfig",
    "TaskNet",
    "TrainConfig",
    "build_meta_learner",
    "build_task_net",
    "mkcnet_config",
    "run_ablation",
    "run_mkcnet",
]

if TYPE_CHECKING:
    from qualcl.recipes.mkcnet.model import TaskNet, build_meta_learner, build_task_net
    from qualcl.recipes.mkcnet.modules import MkcnetTraining
    from qualcl.recipes.mkcnet.recipe import MKCNET, run_ablation, run_mkcnet

    #: ``MKCNET.config(preset, *, dataset, data_dir, overrides, seed)``: the run's config (see :data:`DATASETS`).
    mkcnet_config = MKCNET.config
else:  # torch and Lightning are imported on first use (qualcl run mkcnet --help stays quick)
    __getattr__, __dir__ = lazy_exports(__name__)
