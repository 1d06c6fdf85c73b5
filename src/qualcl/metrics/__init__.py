"""Metrics: QWK, kappa, accuracy, F1, AUC, Dice, IoU (torchmetrics adapters); retrieval; landmarks; by stratum."""

from qualcl.metrics.classification import (
    binary_auroc,
    cohen_kappa,
    confusion_matrix,
    diagnosis_metrics,
    grading_metrics,
    multiclass_auroc_ovo,
    quadratic_weighted_kappa,
    stratified_diagnosis_metrics,
    stratified_grading_metrics,
)
from qualcl.metrics.landmarks import landmark_metrics, radial_errors
from qualcl.metrics.retrieval import (
    dr_graded_relevance,
    map_at_r_columns,
    retrieval_metrics,
    stratified_retrieval_metrics,
)
from qualcl.metrics.segmentation import (
    binarize,
    segmentation_metrics,
    segmentation_scores,
    stratified_segmentation_metrics,
)
from qualcl.metrics.strata import stratify

__all__ = [
    "binarize",
    "binary_auroc",
    "cohen_kappa",
    "confusion_matrix",
    "diagnosis_metrics",
    "dr_graded_relevance",
    "grading_metrics",
    "landmark_metrics",
    "map_at_r_columns",
    "multiclass_auroc_ovo",
    "quadratic_weighted_kappa",
    "radial_errors",
    "retrieval_metrics",
    "segmentation_metrics",
    "segmentation_scores",
    "stratified_diagnosis_metrics",
    "stratified_grading_metrics",
    "stratified_retrieval_metrics",
    "stratified_segmentation_metrics",
    "stratify",
]
