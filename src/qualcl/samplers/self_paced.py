"""``SelfPacedHardNegativeMiner``: CoMCL's per-anchor top-``K_t`` negatives + self-paced anchor selection."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import (
    check_embeddings,
    check_finite,
    check_float_tensor,
    check_int,
    check_number,
    check_positive,
)
from qualcl.distributed import gather_no_grad, is_distributed
from qualcl.functional import MinerOutput, info_nce_from_logits, restrict_top_k
from qualcl.kernels import topk_similarity
from qualcl.samplers.schedule import CosineCountSchedule

__all__ = ["MinerStats", "SelfPacedHardNegativeMiner"]

THRESHOLDS = ("literal", "scaled", "quantile", "off")


@dataclass(frozen=True)
class MinerStats:
    """What the miner did on its last call (for logging and the K_t / selection plots).

    Attributes:
        step: Training step ``t``.
        count: ``K_t``, negatives kept per anchor (before ties).
        total: ``delta``, candidate negatives per anchor.
        threshold: ``lambda_t`` (``inf`` with ``threshold="off"``).
        selected_fraction: Fraction of anchors with ``s_i = 1``.
    """

    step: int
    count: int
    total: int
    threshold: float
    selected_fraction: float


class SelfPacedHardNegativeMiner:
    r"""Keeps each anchor's ``K_t`` hardest negatives and selects anchors whose restricted loss is small.

    On a block of anchors with detached cosine similarities to their positives ``p`` (``(b,)``) and
    to ``delta`` candidate negatives ``S`` (``(b, delta)``) at step ``t``:

    1. ``K_t = schedule(t, delta)``; per row keep the ``K_t`` most similar negatives (exact
       top-K; ties with the ``K_t``-th value are kept, the ``>=`` of CoMCL Eq. 2).
    2. Restricted loss ``l'_i = logsumexp([p_i, S_ik kept] / tau) - p_i / tau`` (CoMCL Eq. 1 over
       the kept negatives), computed without gradient.
    3. Self-paced selection ``s_i = 1[l'_i < lambda_t]`` (Eq. 3's closed form) with ``lambda_t``
       from ``threshold``:

       - ``"literal"``: ``lambda_t = 1 / K_t``, as printed. Tiny early in training (0.01 for
         ``delta = 100``), so almost no anchor is selected until ``K_t`` is small.
       - ``"scaled"``: ``lambda_t = scale / K_t``.
       - ``"quantile"`` (default): keep the easiest fraction ``rho_t`` of anchors, ``rho_t`` rising
         linearly from ``rho_start`` at ``t = 0`` to ``rho_end`` at ``max_steps`` (ties kept).
       - ``"off"``: ``s_i = 1`` (CoMCL "w/o SPL" keeps top-K_t but no selection).

    It plugs into :class:`qualcl.losses.MultiLevelInfoNCE` (``miner=``) and returns the kept mask
    and ``s_i`` as weights, so each pair's loss is ``sum_i s_i l'_i / sum_i s_i``. Standalone,
    :meth:`select` gives the same for :func:`qualcl.functional.info_nce`, and :meth:`mine`
    returns pytorch-metric-learning index tuples. The selection uses the current step's loss
    (the paper's "previous loss" is the loss of the parameters before this update).

    Args:
        schedule: ``K_t`` schedule (a :class:`CosineCountSchedule`).
        threshold: ``"quantile"``, ``"literal"``, ``"scaled"`` or ``"off"``.
        scale: ``c`` of ``"scaled"``.
        rho_start: Fraction of anchors kept at ``t = 0`` with ``"quantile"``.
        rho_end: Fraction kept at ``max_steps``.
        gather_distributed: Under ``torch.distributed``, take the ``"quantile"`` threshold over the
            anchors of every rank (the losses are all-gathered without gradient), so that the
            selection equals one process's on the concatenated batch. Every rank must then call
            the miner for every level pair, also with no local anchor (``MultiLevelInfoNCE`` with
            ``gather_distributed=True`` does).

    Examples:
        >>> import torch
        >>> from qualcl.losses import MultiLevelInfoNCE
        >>> miner = SelfPacedHardNegativeMiner(CosineCountSchedule(None, max_steps=100))
        >>> loss_fn = MultiLevelInfoNCE(miner=miner)
        >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = loss_fn(z1, z2, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), step=50)
        >>> miner.last_stats.count  # K_t for the last pair (2 negatives at t = T/2)
        1

    Reference:
        CoMCL (Hou et al., MICCAI 2024), Sec. 2.2, Eqs. 2–3; Kumar et al., "Self-Paced Learning for Latent
        Variable Models", NeurIPS 2010.
    """

    def __init__(
        self,
        schedule: CosineCountSchedule,
        threshold: str = "quantile",
        *,
        scale: float = 1.0,
        rho_start: float = 0.5,
        rho_end: float = 1.0,
        gather_distributed: bool = False,
    ) -> None:
        if not isinstance(schedule, CosineCountSchedule):
            raise TypeError(f"schedule must be a CosineCountSchedule, got {type(schedule).__name__}")
        if threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
        for name, value in (("rho_start", rho_start), ("rho_end", rho_end)):
            check_number(name, value, minimum=0.0, exclusive_minimum=True, maximum=1.0)
        self.schedule = schedule
        self.threshold = threshold
        self.scale = check_positive("scale", scale)
        self.rho_start = float(rho_start)
        self.rho_end = float(rho_end)
        self.gather_distributed = bool(gather_distributed)
        self.last_stats: MinerStats | None = None

    def __repr__(self) -> str:
        return (
            f"SelfPacedHardNegativeMiner({self.schedule!r}, threshold={self.threshold!r}, "
            f"scale={self.scale}, rho_start={self.rho_start}, rho_end={self.rho_end}, "
            f"gather_distributed={self.gather_distributed})"
        )

    def keep_fraction(self, step: int) -> float:
        """``rho_t`` of the ``"quantile"`` threshold."""
        progress = min(max(step, 0), self.schedule.max_steps) / self.schedule.max_steps
        return self.rho_start + (self.rho_end - self.rho_start) * progress

    def __call__(
        self, positive_sim: Tensor, negative_sim: Tensor, *, temperature: float, step: int | None
    ) -> MinerOutput:
        """Mine one block: see the class docstring. Implements :class:`~qualcl.functional.NegativeMiner`.

        Args:
            positive_sim: ``(b,)`` cosine similarity of each anchor to its positive.
            negative_sim: ``(b, delta)`` cosine similarities to the candidate negatives.
            temperature: ``tau`` of the loss.
            step: Training step ``t`` (required).

        Returns:
            ``MinerOutput(negative_mask (b, delta) bool, weights (b,) in {0, 1})``.
        """
        if step is None:
            raise ValueError("step is required by SelfPacedHardNegativeMiner (pass step=... to the loss)")
        step = check_int("step", step, minimum=None)
        tau = check_positive("temperature", temperature)
        check_float_tensor("positive_sim", positive_sim)
        check_float_tensor("negative_sim", negative_sim)
        if negative_sim.ndim != 2 or positive_sim.shape != negative_sim.shape[:1]:
            raise ValueError(
                "positive_sim must be (b,) and negative_sim (b, delta), got "
                f"{tuple(positive_sim.shape)} and {tuple(negative_sim.shape)}"
            )
        check_finite("positive_sim", positive_sim)
        check_finite("negative_sim", negative_sim)
        keep, selected = self._mine_block(positive_sim, negative_sim, tau, step)
        return MinerOutput(keep, selected)

    def _mine_block(self, positive_sim: Tensor, negative_sim: Tensor, tau: float, step: int) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            total = negative_sim.shape[1]
            count = min(self.schedule(step, total), total)  # a fixed schedule total may exceed the block
            keep = restrict_top_k(negative_sim, None, count)
            restricted = info_nce_from_logits(positive_sim / tau, negative_sim / tau, keep)
            selected, threshold = self._select(restricted, count, step)
            self._record(step, count, total, threshold, selected)
        return keep, selected.to(negative_sim.dtype)

    def _record(self, step: int, count: int, total: int, threshold: float, selected: Tensor) -> None:
        b = selected.numel()
        self.last_stats = MinerStats(
            step=int(step),
            count=count,
            total=total,
            threshold=threshold,
            selected_fraction=int(selected.sum()) / b if b else 0.0,
        )

    def _select(self, losses: Tensor, count: int, step: int) -> tuple[Tensor, float]:
        if self.threshold == "off":
            return torch.ones_like(losses, dtype=torch.bool), math.inf
        if self.threshold in ("literal", "scaled"):
            lam = (1.0 if self.threshold == "literal" else self.scale) / count
            return losses < lam, lam
        pool = gather_no_grad(losses) if self.gather_distributed and is_distributed() else losses
        if pool.numel() == 0:
            return torch.ones_like(losses, dtype=torch.bool), math.inf
        keep = max(1, math.ceil(self.keep_fraction(step) * pool.numel()))
        lam = float(torch.kthvalue(pool.cpu(), keep).values)
        return losses <= lam, lam

    def select(
        self,
        query: Tensor,
        positive: Tensor,
        negatives: Tensor,
        *,
        step: int,
        temperature: float = 0.07,
    ) -> MinerOutput:
        """Mine for embeddings directly (standalone use with :func:`qualcl.functional.info_nce`).

        Args:
            query: ``(N, D)`` anchors.
            positive: ``(N, D)`` positives.
            negatives: ``(M, D)`` candidate negatives.
            step: Training step.
            temperature: ``tau`` of the loss the selection is for.

        Returns:
            ``MinerOutput(negative_mask (N, M), weights (N,))``: pass them as ``negative_mask=``
            and ``weights=`` to :func:`qualcl.functional.info_nce`.
        """
        check_embeddings("query", query, nonzero=True)
        check_embeddings("positive", positive, dim=query.shape[1], nonzero=True)
        check_embeddings("negatives", negatives, dim=query.shape[1], nonzero=True)
        with torch.no_grad():
            q, p, c = (F.normalize(x.detach().float(), dim=1) for x in (query, positive, negatives))
            return self((q * p).sum(dim=1), q @ c.T, temperature=temperature, step=step)

    def mine(
        self,
        embeddings: Tensor,
        ref_emb: Tensor,
        *,
        step: int,
        temperature: float = 0.07,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """pytorch-metric-learning pair tuple for a two-view batch: row ``i``'s positive is ``ref_emb[i]``.

        Negatives of anchor ``i`` are the rows ``j != i`` of ``ref_emb``, restricted to its hardest
        ``K_t`` by :func:`qualcl.kernels.topk_similarity` (streaming, no ``N x N`` matrix; exactly
        ``K_t`` per anchor, ties broken towards the lower column; ``K_t`` is capped at the ``N - 1``
        candidates, also for a schedule with a larger fixed ``total``); only selected anchors appear. Pass the
        result as ``indices_tuple`` to a PML loss
        called with ``ref_emb=ref_emb`` (e.g. ``NTXentLoss``).

        Args:
            embeddings: ``(N, D)`` anchors.
            ref_emb: ``(N, D)`` positives / candidate negatives.
            step: Training step.
            temperature: ``tau`` used for the self-paced loss.

        Returns:
            ``(a1, p, a2, n)`` long tensors: positive pairs ``(a1, p)`` and negative pairs ``(a2, n)``.
        """
        check_embeddings("embeddings", embeddings, nonzero=True)
        check_embeddings("ref_emb", ref_emb, dim=embeddings.shape[1], nonzero=True)
        step = check_int("step", step, minimum=None)
        if ref_emb.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"ref_emb must have one positive per anchor ({embeddings.shape[0]} rows), got {tuple(ref_emb.shape)}"
            )
        n = embeddings.shape[0]
        if n < 2:
            empty = torch.empty(0, dtype=torch.long, device=embeddings.device)
            return empty, empty, empty, empty
        tau = check_positive("temperature", temperature)
        with torch.no_grad():
            q, r = embeddings.detach().float(), ref_emb.detach().float()
            positive_sim = F.cosine_similarity(q, r, dim=1)
            count = min(self.schedule(step, n - 1), n - 1)  # each row has n - 1 candidates
            own = torch.arange(n, device=q.device)
            values, indices = topk_similarity(q, r, count, exclude_index=own)
            restricted = torch.logsumexp(torch.cat([positive_sim[:, None], values], dim=1) / tau, dim=1)
            restricted = restricted - positive_sim / tau
            selected, threshold = self._select(restricted, count, step)
            self._record(step, count, n - 1, threshold, selected)
            a1 = torch.nonzero(selected).flatten()
            return a1, a1.clone(), a1.repeat_interleave(count), indices[a1].flatten()
