"""CoMCL recipe: multi-level contrastive pre-training with self-paced hard negatives (Hou et al., MICCAI 2024)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qualcl.recipes._cli import lazy_exports
from qualcl.recipes.comcl.config import (
    ABLATIONS,
    PRESETS,
    ComclConfig,
    DataConfig,
    DetectorConfig,
    FinetuneConfig,
    PretrainConfig,
)

if TYPE_CHECKING:
    from qualcl.recipes.comcl.detector import (
        Detections,
        DetectorTraining,
        FasterRCNNDetector,
        GroundTruthDetector,
        LesionDetector,
        train_detector,
    )
    from qualcl.recipes.comcl.detector_run import DETECTOR, DetectorRecipe, run_comcl_detector
    from qualcl.recipes.comcl.recipe import COMCL, ComclData, ComclRecipe, ComclState, run_ablation, run_comcl

    #: ``COMCL.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← the dataset's
    #: settings (NIH ChestX-ray14: 9 classes, 43.2 % LQ) ← arguments ← overrides.
    comcl_config = COMCL.config
    #: ``DETECTOR.config(preset, *, dataset, data_dir, overrides, seed)``.
    detector_config = DETECTOR.config

__all__ = [
    "ABLATIONS",
    "COMCL",
    "DETECTOR",
    "PRESETS",
    "ComclConfig",
    "ComclData",
    "ComclRecipe",
    "ComclState",
    "DataConfig",
    "Detections",
    "DetectorConfig",
    "DetectorRecipe",
    "DetectorTraining",
    "FasterRCNNDetector",
    "FinetuneConfig",
    "GroundTruthDetector",
    "LesionDetector",
    "PretrainConfig",
    "comcl_config",
    "detector_config",
    "run_ablation",
    "run_comcl",
    "run_comcl_detector",
    "train_detector",
]

# The models, data and recipe (torch, Lightning) are imported on first use, so that importing this package
# for its config (``qualcl run NAME --help``) stays quick; type checkers read the imports above instead.
if not TYPE_CHECKING:  # the names of the TYPE_CHECKING block above
    __getattr__, __dir__ = lazy_exports(__name__)
