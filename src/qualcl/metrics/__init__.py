"""Metrics: QWK, kappa, accuracy, F1, one-vs-one AUC (torchmetrics adapters) and retrieval metrics, stratified."""

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
from qualcl.metrics.retrieval import dr_graded_relevance, retrieval_metrics, stratified_retrieval_metrics

__all__ = [
    "binary_auroc",
    "cohen_kappa",
    "confusion_matrix",
    "diagnosis_metrics",
    "dr_graded_relevance",
    "grading_metrics",
    "multiclass_auroc_ovo",
    "quadratic_weighted_kappa",
    "retrieval_metrics",
    "stratified_diagnosis_metrics",
    "stratified_grading_metrics",
    "stratified_retrieval_metrics",
]
