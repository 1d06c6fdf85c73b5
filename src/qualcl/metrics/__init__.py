"""Metrics: thin adapters over torchmetrics (QWK, accuracy, macro F1, stratified by quality)."""

from qualcl.metrics.classification import (
    confusion_matrix,
    grading_metrics,
    quadratic_weighted_kappa,
    stratified_grading_metrics,
)

__all__ = ["confusion_matrix", "grading_metrics", "quadratic_weighted_kappa", "stratified_grading_metrics"]
