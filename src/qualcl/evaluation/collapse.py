"""Embedding-collapse monitor: effective rank (RankMe) and Wang & Isola's alignment and uniformity."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import check_embeddings, check_positive

__all__ = ["collapse_metrics", "effective_rank"]


def effective_rank(embeddings: Tensor) -> float:
    r"""RankMe: ``exp(H(p))`` of the normalised singular values ``p`` of the ``(N, D)`` embeddings.

    .. math::
        \mathrm{rank}_{\mathrm{eff}} = \exp\Big(-\sum_k p_k \log p_k\Big), \qquad
        p_k = \frac{\sigma_k}{\sum_j \sigma_j}

    ``min(N, D)`` for embeddings spread evenly over every direction, 1 when every row lies on one
    line (complete collapse). Not centred (as RankMe): a common offset counts as one direction.

    Args:
        embeddings: ``(N, D)`` finite embeddings.

    Returns:
        The effective rank in ``[1, min(N, D)]`` (1 for an all-zero matrix).

    Examples:
        >>> import torch
        >>> round(effective_rank(torch.eye(4)), 3), round(effective_rank(torch.ones(5, 3)), 3)
        (4.0, 1.0)

    Reference:
        Roy & Vetterli, "The effective rank", EUSIPCO 2007; Garrido et al., "RankMe: Assessing the
        downstream performance of pretrained self-supervised representations by their rank", ICML 2023.
    """
    check_embeddings("embeddings", embeddings)
    singular = torch.linalg.svdvals(embeddings.detach().double())
    # singular values at rounding level (as torch.linalg.matrix_rank's tolerance) count as zero
    singular = singular[singular > singular.max() * torch.finfo(torch.float64).eps * max(embeddings.shape)]
    total = singular.sum()
    if singular.numel() == 0 or float(total) == 0.0:
        return 1.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_metrics(
    embeddings: Tensor, positives: Tensor | None = None, *, t: float = 2.0, alpha: float = 2.0
) -> dict[str, float]:
    r"""Whether a representation collapsed: effective rank, uniformity and (with two views) alignment.

    On the L2-normalised rows ``u_i`` (and their positives ``v_i``):

    .. math::
        \mathcal U = \log \frac{1}{N(N-1)} \sum_{i \ne j} e^{-t \lVert u_i - u_j \rVert^2}, \qquad
        \mathcal A = \frac{1}{N} \sum_i \lVert u_i - v_i \rVert^{\alpha}

    Uniformity ``U`` is ``0`` when every embedding is the same point (collapse) and about ``-2t``
    for points spread over a high-dimensional sphere (``-4`` at ``t = 2``); alignment ``A`` is 0
    when each positive pair coincides. Collapse shows as ``U → 0`` together with a small
    :func:`effective_rank`; a healthy contrastive run keeps ``U`` near ``-2t`` while ``A`` falls.

    Args:
        embeddings: ``(N, D)`` embeddings, ``N >= 2``, non-zero rows.
        positives: ``(N, D)`` the positive of each row (another view), or ``None``.
        t: Uniformity temperature ``> 0`` (Wang & Isola: 2).
        alpha: Alignment exponent ``> 0`` (Wang & Isola: 2).

    Returns:
        ``{"effective_rank", "uniformity"}`` and ``"alignment"`` when ``positives`` are given.

    Examples:
        >>> import torch
        >>> collapsed = torch.ones(8, 16)
        >>> out = collapse_metrics(collapsed, collapsed)
        >>> out["effective_rank"], out["uniformity"], out["alignment"]
        (1.0, 0.0, 0.0)

    Reference:
        Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
        Uniformity on the Hypersphere", ICML 2020.
    """
    check_embeddings("embeddings", embeddings, nonzero=True)
    n, d = embeddings.shape
    if n < 2:
        raise ValueError(f"embeddings needs at least 2 rows for uniformity, got {n}")
    t = check_positive("t", t)
    alpha = check_positive("alpha", alpha)
    u = F.normalize(embeddings.detach().double(), dim=1)
    squared = torch.cdist(u, u).pow(2)
    off = ~torch.eye(n, dtype=torch.bool, device=u.device)
    uniformity = float(torch.logsumexp(-t * squared[off], dim=0) - math.log(n * (n - 1)))
    out = {"effective_rank": effective_rank(embeddings), "uniformity": min(uniformity, 0.0)}
    if positives is not None:
        check_embeddings("positives", positives, dim=d, nonzero=True)
        if positives.shape[0] != n:
            raise ValueError(f"positives must have shape ({n}, {d}) like embeddings, got {tuple(positives.shape)}")
        v = F.normalize(positives.detach().double(), dim=1)
        out["alignment"] = float((u - v).norm(dim=1).pow(alpha).mean())
    return out
