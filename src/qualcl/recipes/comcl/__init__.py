"""CoMCL recipe: multi-level contrastive pre-training with self-paced hard negatives (Hou et al., MICCAI 2024)."""

from __future__ import annotations

from collections.abc import Sequence

from qualcl.recipes.comcl.ablation import run_ablation
from qualcl.recipes.comcl.config import (
    ABLATIONS,
    PRESETS,
    ComclConfig,
    DataConfig,
    FinetuneConfig,
    PretrainConfig,
)
from qualcl.recipes.comcl.detector import (
    Detections,
    DetectorTraining,
    FasterRCNNDetector,
    GroundTruthDetector,
    LesionDetector,
    train_detector,
)
from qualcl.recipes.comcl.detector_run import DETECTOR, DetectorConfig, DetectorRecipe, run_comcl_detector
from qualcl.recipes.comcl.recipe import COMCL, ComclData, ComclRecipe, ComclState, run_comcl

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


def comcl_config(
    preset: str = "default",
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
) -> ComclConfig:
    """``COMCL.config(...)``: preset ← dataset settings (NIH: 9 classes, 43.2 % LQ) ← arguments ← overrides.

    Example:
        >>> comcl_config("smoke", dataset="nih-cxr14", data_dir="NIH").num_classes
        9
    """
    return COMCL.config(preset, dataset=dataset, data_dir=data_dir, overrides=overrides, seed=seed)


def detector_config(preset: str = "default", *, overrides: Sequence[str] = ()) -> DetectorConfig:
    """``DETECTOR.config(preset, overrides=...)``."""
    return DETECTOR.config(preset, overrides=overrides)
