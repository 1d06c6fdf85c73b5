"""Local-discrimination recipe: unsupervised pixel/region discrimination, then segmentation, landmarks, shape priors.

Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qualcl.recipes._cli import lazy_exports
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

if TYPE_CHECKING:
    from qualcl.recipes.local_discrimination.data import (
        SYNTHETIC_TASKS,
        LDData,
        SegmentationDataset,
        SegmentationSet,
        load_ld_data,
    )
    from qualcl.recipes.local_discrimination.model import (
        LDNet,
        LDOutput,
        SegmentationNet,
        ShapeDiscriminator,
        ld_decoder,
    )
    from qualcl.recipes.local_discrimination.modules import (
        LDPretraining,
        SegmentationTransfer,
        ShapeGuidedTraining,
        build_losses,
        pretraining_losses,
    )
    from qualcl.recipes.local_discrimination.recipe import (
        LOCAL_DISCRIMINATION,
        LDState,
        LocalDiscriminationRecipe,
        run_ablation,
        run_local_discrimination,
    )

    #: ``LOCAL_DISCRIMINATION.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← overrides.
    local_discrimination_config = LOCAL_DISCRIMINATION.config

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
    "build_losses",
    "ld_decoder",
    "load_ld_data",
    "local_discrimination_config",
    "pretraining_losses",
    "run_ablation",
    "run_local_discrimination",
]

# The models, data and recipe (torch, Lightning) are imported on first use, so that importing this package
# for its config (``qualcl run NAME --help``) stays quick; type checkers read the imports above instead.
if not TYPE_CHECKING:  # the names of the TYPE_CHECKING block above
    __getattr__, __dir__ = lazy_exports(__name__)
