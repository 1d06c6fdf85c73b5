"""Local-discrimination recipe: unsupervised pixel/region discrimination, then segmentation, landmarks, shape priors.

Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023.
"""

from __future__ import annotations

from qualcl.recipes.local_discrimination.ablation import ablation_table, run_ablation, variant_config
from qualcl.recipes.local_discrimination.config import (
    ABLATIONS,
    PRESETS,
    DataConfig,
    EvalConfig,
    LocalDiscriminationConfig,
    ModelConfig,
    PretrainConfig,
    ShapeConfig,
    TransferConfig,
)
from qualcl.recipes.local_discrimination.data import (
    SYNTHETIC_TASKS,
    LDData,
    SegmentationDataset,
    SegmentationSet,
    load_ld_data,
)
from qualcl.recipes.local_discrimination.model import LDNet, LDOutput, SegmentationNet, ShapeDiscriminator, ld_decoder
from qualcl.recipes.local_discrimination.modules import (
    LDPretraining,
    SegmentationTransfer,
    ShapeGuidedTraining,
    pretraining_losses,
)
from qualcl.recipes.local_discrimination.recipe import (
    LOCAL_DISCRIMINATION,
    LDState,
    LocalDiscriminationRecipe,
    run_local_discrimination,
)

__all__ = [
    "ABLATIONS",
    "LOCAL_DISCRIMINATION",
    "PRESETS",
    "SYNTHETIC_TASKS",
    "DataConfig",
    "EvalConfig",
    "LDData",
    "LDNet",
    "LDOutput",
    "LDPretraining",
    "LDState",
    "LocalDiscriminationConfig",
    "LocalDiscriminationRecipe",
    "ModelConfig",
    "PretrainConfig",
    "SegmentationDataset",
    "SegmentationNet",
    "SegmentationSet",
    "SegmentationTransfer",
    "ShapeConfig",
    "ShapeDiscriminator",
    "ShapeGuidedTraining",
    "TransferConfig",
    "ablation_table",
    "ld_decoder",
    "load_ld_data",
    "local_discrimination_config",
    "pretraining_losses",
    "run_ablation",
    "run_local_discrimination",
    "variant_config",
]

#: ``LOCAL_DISCRIMINATION.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← overrides.
local_discrimination_config = LOCAL_DISCRIMINATION.config
