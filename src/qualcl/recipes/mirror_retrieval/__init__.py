"""Mirror-retrieval recipe: fundus retrieval with mirror attention and a fine triplet loss (Fang et al., BSPC 2023)."""

from __future__ import annotations

from qualcl.recipes.mirror_retrieval.ablation import ablation_table, run_ablation, variant_config
from qualcl.recipes.mirror_retrieval.config import (
    ABLATIONS,
    PRESETS,
    DataConfig,
    EvalConfig,
    MirrorRetrievalConfig,
    ModelConfig,
    TrainConfig,
)
from qualcl.recipes.mirror_retrieval.data import RetrievalData, RetrievalDataset, load_retrieval_data
from qualcl.recipes.mirror_retrieval.model import MirrorRetrievalNet, RetrievalOutput, mirror_images
from qualcl.recipes.mirror_retrieval.modules import RetrievalTraining, build_metric_loss, leave_one_out_metrics
from qualcl.recipes.mirror_retrieval.recipe import MIRROR_RETRIEVAL, MirrorRetrievalRecipe, run_mirror_retrieval

__all__ = [
    "ABLATIONS",
    "MIRROR_RETRIEVAL",
    "PRESETS",
    "DataConfig",
    "EvalConfig",
    "MirrorRetrievalConfig",
    "MirrorRetrievalNet",
    "MirrorRetrievalRecipe",
    "ModelConfig",
    "RetrievalData",
    "RetrievalDataset",
    "RetrievalOutput",
    "RetrievalTraining",
    "TrainConfig",
    "ablation_table",
    "build_metric_loss",
    "leave_one_out_metrics",
    "load_retrieval_data",
    "mirror_images",
    "mirror_retrieval_config",
    "run_ablation",
    "run_mirror_retrieval",
    "variant_config",
]

#: ``MIRROR_RETRIEVAL.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← overrides.
mirror_retrieval_config = MIRROR_RETRIEVAL.config
