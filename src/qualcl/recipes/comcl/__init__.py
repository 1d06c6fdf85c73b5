"""CoMCL recipe (seed 000): multi-level contrastive pre-training with self-paced hard negatives."""

from qualcl.recipes.comcl.ablation import run_ablation
from qualcl.recipes.comcl.config import (
    ABLATIONS,
    PRESETS,
    ComclConfig,
    DataConfig,
    FinetuneConfig,
    PretrainConfig,
    comcl_config,
)
from qualcl.recipes.comcl.detector import (
    Detections,
    FasterRCNNDetector,
    GroundTruthDetector,
    LesionDetector,
    train_detector,
)
from qualcl.recipes.comcl.detector_run import DETECTOR_PRESETS, DetectorConfig, run_comcl_detector
from qualcl.recipes.comcl.pipeline import run_comcl

__all__ = [
    "ABLATIONS",
    "DETECTOR_PRESETS",
    "PRESETS",
    "ComclConfig",
    "DataConfig",
    "Detections",
    "DetectorConfig",
    "FasterRCNNDetector",
    "FinetuneConfig",
    "GroundTruthDetector",
    "LesionDetector",
    "PretrainConfig",
    "comcl_config",
    "run_ablation",
    "run_comcl",
    "run_comcl_detector",
    "train_detector",
]
