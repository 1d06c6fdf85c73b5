"""What every recipe evaluates with: linear probes, kNN, feature geometry and an exact retrieval index."""

from qualcl.evaluation.geometry import feature_geometry
from qualcl.evaluation.knn import KNNResult, knn_predict
from qualcl.evaluation.probe import LinearProbe, linear_probe
from qualcl.evaluation.retrieval import RetrievalIndex, SearchResult

__all__ = [
    "KNNResult",
    "LinearProbe",
    "RetrievalIndex",
    "SearchResult",
    "feature_geometry",
    "knn_predict",
    "linear_probe",
]
