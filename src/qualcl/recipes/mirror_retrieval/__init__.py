"""Mirror-retrieval recipe: fundus retrieval with mirror attention and a fine triplet loss (Fang et al., BSPC 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qualcl.recipes._cli import lazy_exports
from qualcl.recipes.mirror_retrieval.config import (
    ABLATIONS,
    PRESETS,
    DataConfig,
    EvalConfig,
    MirrorRetrievalConfig,
    ModelConfig,
    TrainConfig,
)

if TYPE_CHECKING:
    from qualcl.recipes.mirror_retrieval.data import RetrievalData, RetrievalDataset, load_retrieval_data
    from qualcl.recipes.mirror_retrieval.model import MirrorRetrievalNet, RetrievalOutput, mirror_images
    from qualcl.recipes.mirror_retrieval.modules import RetrievalTraining, build_metric_loss, leave_one_out_metrics
    from qualcl.recipes.mirror_retrieval.recipe import (
        MIRROR_RETRIEVAL,
        MirrorRetrievalRecipe,
        run_ablation,
        run_mirror_retrieval,
    )

    #: ``MIRROR_RETRIEVAL.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← overrides.
    mirror_retrieval_config = MIRROR_RETRIEVAL.config

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
    "build_metric_loss",
    "leave_one_out_metrics",
    "load_retrieval_data",
    "mirror_images",
    "mirror_retrieval_config",
    "run_ablation",
    "run_mirror_retrieval",
]

# The models, data and recipe (torch, Lightning) are imported on first use, so that importing this package
# for its config (``qualcl run NAME --help``) stays quick; type checkers read the imports above instead.
if not TYPE_CHECKING:  # the names of the TYPE_CHECKING block above
    __getattr__, __dir__ = lazy_exports(__name__)
