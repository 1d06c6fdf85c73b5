"""Evaluation: probes, kNN, feature geometry, collapse metrics, exact retrieval, landmarks, statistics over seeds."""

from qualcl.evaluation.collapse import collapse_metrics, effective_rank
from qualcl.evaluation.geometry import feature_geometry
from qualcl.evaluation.knn import KNNResult, knn_predict
from qualcl.evaluation.landmarks import (
    LandmarkPrediction,
    center_weighted_embeddings,
    landmark_template,
    localise_landmarks,
)
from qualcl.evaluation.probe import LinearProbe, linear_probe
from qualcl.evaluation.retrieval import RetrievalIndex, SearchResult
from qualcl.evaluation.seeds import mean_std, paired_difference

__all__ = [
    "KNNResult",
    "LandmarkPrediction",
    "LinearProbe",
    "RetrievalIndex",
    "SearchResult",
    "center_weighted_embeddings",
    "collapse_metrics",
    "effective_rank",
    "feature_geometry",
    "knn_predict",
    "landmark_template",
    "linear_probe",
    "localise_landmarks",
    "mean_std",
    "paired_difference",
]
