"""Image–text self-supervision for fundus images: contrastive, masked-image and caption objectives with fusion."""

from __future__ import annotations

from qualcl.recipes.fundus_mm.config import (
    ABLATIONS,
    PRESETS,
    DataConfig,
    EvalConfig,
    FundusMMConfig,
    ModelConfig,
    TrainConfig,
)
from qualcl.recipes.fundus_mm.data import FundusMMData, PairDataset, load_fundus_mm_data
from qualcl.recipes.fundus_mm.model import FundusMMNet, PretrainOutput
from qualcl.recipes.fundus_mm.modules import ImageTextPretraining, class_embeddings, zero_shot_logits
from qualcl.recipes.fundus_mm.prompts import CLASS_DEFINITIONS, TEMPLATES, class_prompts
from qualcl.recipes.fundus_mm.recipe import FUNDUS_MM, FundusMMRecipe, FundusMMState, run_fundus_mm

__all__ = [
    "ABLATIONS",
    "CLASS_DEFINITIONS",
    "FUNDUS_MM",
    "PRESETS",
    "TEMPLATES",
    "DataConfig",
    "EvalConfig",
    "FundusMMConfig",
    "FundusMMData",
    "FundusMMNet",
    "FundusMMRecipe",
    "FundusMMState",
    "ImageTextPretraining",
    "ModelConfig",
    "PairDataset",
    "PretrainOutput",
    "TrainConfig",
    "class_embeddings",
    "class_prompts",
    "fundus_mm_config",
    "load_fundus_mm_data",
    "run_fundus_mm",
    "zero_shot_logits",
]

#: ``FUNDUS_MM.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← overrides.
fundus_mm_config = FUNDUS_MM.config
