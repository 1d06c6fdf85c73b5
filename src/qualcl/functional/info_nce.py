"""InfoNCE with shared candidates, masks, per-row top-K restriction and per-anchor weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import (
    check_embeddings,
    check_mask,
    check_positive,
    check_reduction,
    check_top_k,
    check_weights,
)
from qualcl.functional.reduction import weighted_reduce

__all__ = ["info_nce", "info_nce_from_logits", "nt_xent", "restrict_top_k"]


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """Return the dtype losses are computed in: float64 stays float64, everything else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def restrict_top_k(similarity: Tensor, keep: Tensor | None, k: int) -> Tensor:
    """Return the mask of the ``k`` most similar kept candidates of each row.

    Selection runs on detached values, so it carries no gradient. Candidates tied with the
    ``k``-th value are kept too (``>=``), so a row may keep more than ``k``; a row with fewer than
    ``k`` kept candidates keeps all of them.

    Args:
        similarity: ``(N, M)`` similarities or logits.
        keep: ``(N, M)`` bool mask of usable candidates, or ``None`` for all.
        k: Number of candidates to keep per row, ``1 <= k <= M``.

    Returns:
        ``(N, M)`` bool mask.

    Examples:
        >>> import torch
        >>> restrict_top_k(torch.tensor([[0.1, 0.9, 0.5]]), None, 2)
        tensor([[False,  True,  True]])
    """
    scores = similarity.detach()
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    selected = scores >= kth
    return selected if keep is None else selected & keep


def info_nce_from_logits(
    positive_logits: Tensor,
    negative_logits: Tensor,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Per-anchor InfoNCE from precomputed logits.

    ``loss_i = logsumexp([p_i, n_ik for kept k]) - p_i``.

    Args:
        positive_logits: ``(N,)`` logits of each anchor's positive.
        negative_logits: ``(N, M)`` logits against candidates.
        negative_mask: ``(N, M)`` bool, True = candidate used, or ``None`` for all.

    Returns:
        ``(N,)`` per-anchor losses (``>= 0``).
    """
    if negative_mask is not None:
        negative_logits = negative_logits.masked_fill(~negative_mask, float("-inf"))
    logits = torch.cat([positive_logits[:, None], negative_logits], dim=1)
    return torch.logsumexp(logits, dim=1) - positive_logits


def info_nce(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float = 0.07,
    negative_mask: Tensor | None = None,
    top_k: int | None = None,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""InfoNCE of each query against its positive and a shared set of negative candidates.

    .. math::
        \ell_i = -\log \frac{e^{s_{ii}/\tau}}{e^{s_{ii}/\tau} + \sum_{k \in K_i} e^{s_{ik}/\tau}}

    with cosine similarities ``s`` (inputs are L2-normalised inside), ``s_ii = cos(query_i,
    positive_i)`` and ``K_i`` the kept negatives of row ``i``: those allowed by ``negative_mask``,
    then, if ``top_k`` is set, only the ``top_k`` most similar of them (ties at the ``top_k``-th
    value are kept; selection is on detached similarities, the kept logits stay differentiable).
    The log-sum-exp runs in float32 for half-precision inputs (float64 stays float64); the output
    has that compute dtype. A row whose negatives are all masked has nothing to contrast: its loss
    is 0 and it leaves the mean (weight 0), as in :func:`qualcl.kernels.fused_info_nce`.

    This is the dense reference form (a separate positive per row, ``(N, M)`` logits); the streaming
    kernel with every positive form (indices, labels, masks) is
    :func:`qualcl.kernels.fused_info_nce`, and :class:`qualcl.losses.InfoNCE` picks between them.

    Args:
        query: ``(N, D)`` anchors.
        positive: ``(N, D)``; row ``i`` is the positive of ``query[i]``.
        negatives: ``(M, D)`` candidates shared by all anchors. ``None`` means in-batch: the
            candidates are the rows of ``positive`` and anchor ``i`` never uses ``positive[i]``
            as a negative (``M = N``).
        temperature: ``tau > 0``.
        negative_mask: ``(N, M)`` bool, True = candidate used (exclude false negatives,
            same-patient rows, ...).
        top_k: Keep only the ``top_k`` most similar kept negatives per row, ``1 <= top_k <= M``.
        weights: ``(N,)`` non-negative per-anchor weights (e.g. image quality).
        reduction: ``"mean"`` (weighted mean), ``"sum"`` (weighted sum) or ``"none"``
            (``(N,)`` weighted per-anchor losses).

    Returns:
        Scalar loss, or ``(N,)`` with ``reduction="none"``.

    Raises:
        ValueError: On shape mismatch, empty or non-finite input, ``temperature <= 0``,
            ``top_k`` outside ``[1, M]``, or a bad ``reduction``.

    Examples:
        >>> import torch
        >>> from qualcl.functional import info_nce
        >>> q, p, n = torch.randn(8, 16), torch.randn(8, 16), torch.randn(32, 16)
        >>> info_nce(q, p, n, temperature=0.1, top_k=4).shape
        torch.Size([])

    Reference:
        Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018; used per
        level pair by CoMCL (Eq. 1).
    """
    tau = check_positive("temperature", temperature)
    check_reduction(reduction)
    check_embeddings("query", query, nonzero=True)
    n, d = query.shape
    check_embeddings("positive", positive, dim=d, nonzero=True)
    if positive.shape[0] != n:
        raise ValueError(
            f"positive must have the same number of rows as query ({n}), got shape {tuple(positive.shape)}"
        )
    if negatives is not None:
        check_embeddings("negatives", negatives, dim=d, nonzero=True)
    m = n if negatives is None else negatives.shape[0]
    if negative_mask is not None:
        check_mask("negative_mask", negative_mask, (n, m))
    check_top_k(top_k, m)
    if weights is not None:
        check_weights("weights", weights, n)

    dtype = compute_dtype(query, positive, *([] if negatives is None else [negatives]))
    q = F.normalize(query.to(dtype), dim=1)
    p = F.normalize(positive.to(dtype), dim=1)
    c = p if negatives is None else F.normalize(negatives.to(dtype), dim=1)
    positive_logits = (q * p).sum(dim=1) / tau
    negative_logits = q @ c.T / tau

    keep = negative_mask
    if negatives is None:
        not_self = ~torch.eye(n, dtype=torch.bool, device=query.device)
        keep = not_self if keep is None else keep & not_self
    if top_k is not None:
        keep = restrict_top_k(negative_logits, keep, top_k)
    losses = info_nce_from_logits(positive_logits, negative_logits, keep)
    if keep is not None:  # rows with no negative left: loss 0, and out of the mean
        contrasted = keep.any(dim=1).to(losses.dtype)
        weights = contrasted if weights is None else weights * contrasted.to(weights.dtype)
    return weighted_reduce(losses, weights, reduction)


def nt_xent(z1: Tensor, z2: Tensor, *, temperature: float = 0.07, reduction: str = "mean") -> Tensor:
    """NT-Xent (SimCLR) on two views, as InfoNCE over the ``2N`` stacked embeddings.

    Every one of the ``2N`` rows of ``[z1; z2]`` is an anchor whose positive is its other view and
    whose negatives are the ``2N - 2`` remaining rows. Equals pytorch-metric-learning's
    ``NTXentLoss`` on ``embeddings=[z1; z2]``, ``labels=[0..N-1, 0..N-1]``.

    Args:
        z1: ``(N, D)`` first view.
        z2: ``(N, D)`` second view.
        temperature: ``tau > 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(2N,)``).

    Returns:
        Scalar loss, or ``(2N,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> nt_xent(torch.randn(4, 8), torch.randn(4, 8), temperature=0.5).shape
        torch.Size([])

    Reference:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", 2020.
    """
    check_embeddings("z1", z1, nonzero=True)
    check_embeddings("z2", z2, dim=z1.shape[1], nonzero=True)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    both = torch.cat([z1, z2])
    idx = torch.arange(2 * n, device=z1.device)
    keep = idx[:, None] != idx[None, :]
    keep[idx, (idx + n) % (2 * n)] = False
    return info_nce(
        both,
        torch.cat([z2, z1]),
        both,
        temperature=temperature,
        negative_mask=keep,
        reduction=reduction,
    )
