"""Fused ops whose cost dominates: Triton on CUDA, streaming torch elsewhere, a naive path for tests.

- :func:`fused_info_nce`: InfoNCE / multi-positive InfoNCE over ``(N, D)`` × ``(M, D)`` with masks,
  per-row top-K and weights, without the ``(N, M)`` logits (registered as ``qualcl::info_nce``).
- :func:`topk_similarity`: exact per-row top-K similarities and indices (``qualcl::topk_similarity``).
- :func:`batch_hard_triplets`: batch-hard triplet mining on two K = 1 reductions.
- :func:`fused_siglip`: SigLIP's pairwise sigmoid loss without the ``(B, B)`` logits
  (``qualcl::siglip``).

Every op takes ``impl="auto" | "triton" | "torch" | "naive"``; the loss modules (``InfoNCE``,
``MultiLevelInfoNCE``, ``ClipLoss``) take the same argument and keep their dense path for small
problems (up to :data:`DENSE_LIMIT` logits). See ``docs/performance.md``.
"""

import warnings
from typing import Any

from qualcl.kernels._dispatch import DENSE_LIMIT, triton_available
from qualcl.kernels.batch_hard import batch_hard_triplets
from qualcl.kernels.fused_info_nce import fused_info_nce
from qualcl.kernels.siglip import fused_siglip
from qualcl.kernels.topk import topk_similarity

__all__ = [
    "DENSE_LIMIT",
    "batch_hard_triplets",
    "fused_info_nce",
    "fused_siglip",
    "topk_similarity",
    "triton_available",
]


def __getattr__(name: str) -> Any:
    """``qualcl.kernels.info_nce`` was renamed :func:`fused_info_nce` (dense reference: ``functional.info_nce``)."""
    if name == "info_nce":
        warnings.warn(
            "qualcl.kernels.info_nce is now qualcl.kernels.fused_info_nce (the dense reference with a "
            "separate positive is qualcl.functional.info_nce); the old name will be removed",
            FutureWarning,
            stacklevel=2,
        )
        return fused_info_nce
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
