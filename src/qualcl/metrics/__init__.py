"""Metrics: thin adapters over torchmetrics (QWK, kappa, accuracy, F1, one-vs-one AUC, stratified by quality)."""

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

__all__ = [
    "binary_auroc",
    "cohen_kappa",
    "confusion_matrix",
    "diagnosis_metrics",
    "grading_metrics",
    "multiclass_auroc_ovo",
    "quadratic_weighted_kappa",
    "stratified_diagnosis_metrics",
    "stratified_grading_metrics",
]
