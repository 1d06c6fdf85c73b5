"""Metrics: QWK, kappa, accuracy, F1, AUC (torchmetrics adapters); retrieval P@k, mAP, MRR, NDCG; by stratum."""

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
from qualcl.metrics.retrieval import (
    dr_graded_relevance,
    map_at_r_columns,
    retrieval_metrics,
    stratified_retrieval_metrics,
)

__all__ = [
    "binary_auroc",
    "cohen_kappa",
    "confusion_matrix",
    "diagnosis_metrics",
    "dr_graded_relevance",
    "grading_metrics",
    "map_at_r_columns",
    "multiclass_auroc_ovo",
    "quadratic_weighted_kappa",
    "retrieval_metrics",
    "stratified_diagnosis_metrics",
    "stratified_grading_metrics",
    "stratified_retrieval_metrics",
]
