"""Image–text self-supervision for fundus images: contrastive, masked-image and caption objectives with fusion."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qualcl.recipes._cli import lazy_exports
from qualcl.recipes.fundus_mm.config import (
    ABLATIONS,
    PAPER_TABLE,
    PRESETS,
    DataConfig,
    EvalConfig,
    FundusMMConfig,
    ModelConfig,
    TrainConfig,
)

if TYPE_CHECKING:
    from qualcl.recipes.fundus_mm.data import FundusMMData, PairDataset, load_fundus_mm_data
    from qualcl.recipes.fundus_mm.model import FundusMMNet, PretrainOutput
    from qualcl.recipes.fundus_mm.modules import (
        ImageTextObjectives,
        ImageTextPretraining,
        build_objectives,
        class_embeddings,
        zero_shot_logits,
    )
    from qualcl.recipes.fundus_mm.prompts import CLASS_DEFINITIONS, TEMPLATES, class_prompts
    from qualcl.recipes.fundus_mm.recipe import FUNDUS_MM, FundusMMRecipe, FundusMMState, run_ablation, run_fundus_mm

    #: ``FUNDUS_MM.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← overrides.
    fundus_mm_config = FUNDUS_MM.config

__all__ = [
    "ABLATIONS",
    "CLASS_DEFINITIONS",
    "FUNDUS_MM",
    "PAPER_TABLE",
    "PRESETS",
    "TEMPLATES",
    "DataConfig",
    "EvalConfig",
    "FundusMMConfig",
    "FundusMMData",
    "FundusMMNet",
    "FundusMMRecipe",
    "FundusMMState",
    "ImageTextObjectives",
    "ImageTextPretraining",
    "ModelConfig",
    "PairDataset",
    "PretrainOutput",
    "TrainConfig",
    "build_objectives",
    "class_embeddings",
    "class_prompts",
    "fundus_mm_config",
    "load_fundus_mm_data",
    "run_ablation",
    "run_fundus_mm",
    "zero_shot_logits",
]

# The models, data and recipe (torch, Lightning) are imported on first use, so that importing this package
# for its config (``qualcl run NAME --help``) stays quick; type checkers read the imports above instead.
if not TYPE_CHECKING:  # the names of the TYPE_CHECKING block above
    __getattr__, __dir__ = lazy_exports(__name__)
