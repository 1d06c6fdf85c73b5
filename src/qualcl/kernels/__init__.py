"""Fused ops whose cost dominates: Triton on CUDA, streaming torch elsewhere, a naive path for tests.

- :func:`info_nce`: InfoNCE / multi-positive InfoNCE over ``(N, D)`` × ``(M, D)`` with masks,
  per-row top-K and weights, without the ``(N, M)`` logits (registered as ``qualcl::info_nce``).
- :func:`topk_similarity`: exact per-row top-K similarities and indices (``qualcl::topk_similarity``).
- :func:`batch_hard_triplets`: batch-hard triplet mining on two K = 1 reductions.

Every op takes ``impl="auto" | "triton" | "torch" | "naive"``; the loss modules (``InfoNCE``,
``MultiLevelInfoNCE``, ``ClipLoss``) take the same argument and keep their dense path for small
problems (:func:`prefers_dense`). See ``docs/performance.md``.
"""

from qualcl.kernels._dispatch import DENSE_LIMIT, IMPLS, check_impl, prefers_dense, resolve_impl, triton_available
from qualcl.kernels.batch_hard import batch_hard_triplets
from qualcl.kernels.info_nce import info_nce
from qualcl.kernels.topk import topk_similarity

__all__ = [
    "DENSE_LIMIT",
    "IMPLS",
    "batch_hard_triplets",
    "check_impl",
    "info_nce",
    "prefers_dense",
    "resolve_impl",
    "topk_similarity",
    "triton_available",
]
