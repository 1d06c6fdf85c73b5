"""CoMCL recipe: multi-level contrastive pre-training with self-paced hard negatives (Hou et al., MICCAI 2024)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qualcl.recipes._cli import lazy_exports
from qualcl.recipes.comcl.config import ABLATIONS, PRESETS, ComclConfig

__all__ = [
    "ABLATIONS",
    "COMCL",
    "PRESETS",
    "ComclConfig",
    "FasterRCNNDetector",
    "GroundTruthDetector",
    "LesionDetector",
    "comcl_config",
    "detector_config",
    "run_ablation",
    "run_comcl",
    "run_comcl_detector",
    "train_detector",
]

if TYPE_CHECKING:
    from qualcl.recipes.comcl.detector import FasterRCNNDetector, GroundTruthDetector, LesionDetector, train_detector
    from qualcl.recipes.comcl.detector_run import DETECTOR, run_comcl_detector
    from qualcl.recipes.comcl.recipe import COMCL, run_ablation, run_comcl

    #: ``COMCL.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← the dataset's
    #: settings (NIH ChestX-ray14: 9 classes, 43.2 % LQ) ← arguments ← overrides.
    comcl_config = COMCL.config
    #: ``DETECTOR.config(preset, *, dataset, data_dir, overrides, seed)``.
    detector_config = DETECTOR.config
else:  # torch and Lightning are imported on first use (qualcl run comcl --help stays quick)
    __getattr__, __dir__ = lazy_exports(__name__)
