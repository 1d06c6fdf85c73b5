"""What every recipe evaluates with: linear probes, kNN, feature geometry, an exact retrieval index, landmarks."""

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

__all__ = [
    "KNNResult",
    "LandmarkPrediction",
    "LinearProbe",
    "RetrievalIndex",
    "SearchResult",
    "center_weighted_embeddings",
    "feature_geometry",
    "knn_predict",
    "landmark_template",
    "linear_probe",
    "localise_landmarks",
]
