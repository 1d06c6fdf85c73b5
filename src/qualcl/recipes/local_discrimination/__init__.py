"""Local-discrimination recipe: unsupervised pixel/region discrimination, then segmentation, landmarks, shape priors.

Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qualcl.recipes._cli import lazy_exports
from qualcl.recipes.local_discrimination.config import ABLATIONS, LocalDiscriminationConfig

__all__ = [
    "ABLATIONS",
    "LOCAL_DISCRIMINATION",
    "LDNet",
    "LDPretraining",
    "LocalDiscriminationConfig",
    "SegmentationNet",
    "SegmentationTransfer",
    "ShapeDiscriminator",
    "ShapeGuidedTraining",
    "build_losses",
    "local_discrimination_config",
    "pretraining_losses",
    "run_ablation",
    "run_local_discrimination",
]

if TYPE_CHECKING:
    from qualcl.recipes.local_discrimination.model import LDNet, SegmentationNet, ShapeDiscriminator
    from qualcl.recipes.local_discrimination.modules import (
        LDPretraining,
        SegmentationTransfer,
        ShapeGuidedTraining,
        build_losses,
        pretraining_losses,
    )
    from qualcl.recipes.local_discrimination.recipe import LOCAL_DISCRIMINATION, run_ablation, run_local_discrimination

    #: ``LOCAL_DISCRIMINATION.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← overrides.
    local_discrimination_config = LOCAL_DISCRIMINATION.config
else:  # torch and Lightning are imported on first use (qualcl run NAME --help stays quick)
    __getattr__, __dir__ = lazy_exports(__name__)
