"""``CircleLoss`` and ``FineTripletLoss``: :func:`qualcl.functional.circle_loss` on the loss protocol.

Both are in the ``metric`` family (:class:`qualcl.losses.base.Loss`) and batch-global: with
``gather_distributed=True`` under ``torch.distributed`` they are exact (see :class:`CircleLoss`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qualcl._validation import check_choice, check_embeddings, check_float_tensor, check_int, check_positive
from qualcl.functional.circle import (
    AGGREGATES,
    check_margin,
    circle_global,
    circle_per_anchor,
    circle_row_terms,
    relevance_degrees,
)
from qualcl.kernels.batch_hard import check_distance
from qualcl.losses.base import Loss

__all__ = ["RELEVANCES", "CircleLoss", "FineTripletLoss"]

RELEVANCES = ("mirror_agreement", "symmetric")


def _check_aggregate(value: Any, reduction: str) -> str:
    aggregate = check_choice("aggregate", value, AGGREGATES)
    if aggregate == "global" and reduction == "none":
        raise ValueError(
            "reduction='none' needs aggregate='per_anchor': aggregate='global' is one log over all pairs, "
            "it has no per-anchor losses"
        )
    return aggregate


def _check_cosine(value: Any) -> str:
    distance = check_distance(value)
    if distance != "cosine":
        raise ValueError(
            f"distance must be 'cosine' for the circle loss, got {distance!r}: its optima (1 - m for positives, "
            "m for negatives) and its weights alpha are defined on similarities in [-1, 1] (the paper's; "
            "pytorch-metric-learning's CircleLoss likewise accepts only CosineSimilarity)"
        )
    return distance


class _CircleBase(Loss):
    """What CircleLoss and FineTripletLoss share: settings, the row terms and the exact reduction."""

    family = "metric"
    batch_global = True

    def __init__(
        self,
        *,
        m: float,
        gamma: float,
        aggregate: str,
        distance: str,
        detach_alpha: bool,
        reduction: str,
        gather_distributed: bool,
        chunk_size: int | None,
        names: tuple[str, str],
    ) -> None:
        super().__init__(reduction=reduction, gather_distributed=gather_distributed)
        self.m = check_margin(m, names[0])
        self.gamma = check_positive(names[1], gamma)
        self.aggregate = _check_aggregate(aggregate, self.reduction)
        self.distance = _check_cosine(distance)
        self.detach_alpha = bool(detach_alpha)
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size)

    def _loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor | None,
        ref_labels: Tensor | None,
        pair_weights: Tensor | tuple[Tensor, Tensor] | None,
        weights: Tensor | None,
    ) -> Tensor:
        if self.aggregate == "global" and weights is not None:
            raise ValueError(
                "weights (per-anchor) need aggregate='per_anchor': aggregate='global' has no anchors to weigh"
            )
        distributed = self.distributed
        pos, neg, zero = circle_row_terms(
            embeddings,
            labels,
            indices_tuple,
            ref_emb,
            ref_labels,
            margin=self.m,
            gamma=self.gamma,
            aggregate=self.aggregate,
            pair_weights=pair_weights,
            detach_alpha=self.detach_alpha,
            chunk_size=self.chunk_size,
            distributed=distributed,
        )
        if self.aggregate == "global":
            return circle_global(pos, neg, zero, distributed=distributed)
        losses, counted = circle_per_anchor(pos, neg, zero)
        return self.reduce(losses, self.checked_weights(weights, losses.shape[0], losses.device), counted=counted)


class CircleLoss(_CircleBase):
    r"""Circle loss on cosine similarities, with pytorch-metric-learning's argument names (``m``, ``gamma``).

    Positive pairs are pulled above ``Δ_p = 1 − m`` and negative pairs pushed below ``Δ_n = m``,
    each pair's logit scaled by how far it is from its optimum
    (:math:`\alpha^{+} = [1 + m - s]_+`, :math:`\alpha^{-} = [s + m]_+`):

    .. math::
        L_i = \operatorname{softplus}\Big(\operatorname{LSE}_{j \in P(i)}
        \big(-\gamma\, w_{ij}\, \alpha^{+}_{ij} (s_{ij} - \Delta_p)\big)
        + \operatorname{LSE}_{j \in N(i)} \big(\gamma\, \alpha^{-}_{ij} (s_{ij} - \Delta_n)\big)\Big)

    averaged over the anchors with a positive and a negative (``aggregate="per_anchor"``), or one
    :math:`\log(1 + \sum_P e^{\ell^+} \sum_N e^{\ell^-})` over all pairs (``aggregate="global"``,
    the public FundusDR code's form); see :func:`qualcl.functional.circle_loss` for the details
    (pairs, weights, streaming). A ``metric``-family loss (:mod:`qualcl.losses.base`).

    Relation to pytorch-metric-learning: with ``aggregate="per_anchor"`` (the default),
    ``CircleLoss(m=m, gamma=g)`` equals ``pytorch_metric_learning.losses.CircleLoss(m=m,
    gamma=g)`` (its cosine similarity, detached ``α``, ``AvgNonZeroReducer``), values and
    gradients, with the same ``labels``, ``indices_tuple``, ``ref_emb`` and ``ref_labels``, under
    two conditions. (1) Rounding: PML's softplus returns ``x`` above 20, qualcl's is exact, a
    relative difference below ``e^{-20}``. (2) No anchor's loss may round to 0: PML's
    ``AvgNonZeroReducer`` leaves losses ``<= 0`` out of its mean, qualcl counts every anchor that
    has a positive and a negative. An anchor's loss is at least ``softplus(−2 γ m²)`` (each
    log-sum-exp is at least ``−γ m²``), which rounds to 0 only below about ``−104`` in float32
    (``−745`` in float64): the two means are equal whenever ``γ·m² < 52`` in float32 (the
    defaults give 16; ``γ = 256, m = 0.5`` gives 64, where well-separated anchors reach 0 and PML's
    mean is taken over fewer anchors). Only the defaults differ: PML's are ``m = 0.4``, ``γ = 80``
    (the circle-loss paper's fine-grained retrieval setting), qualcl's ``m = 0.25``, ``γ = 256``
    (the paper's face-recognition setting). PML's ``CircleLoss`` accepts only
    ``CosineSimilarity``, and so does this one: ``distance`` is taken for the metric family's
    sake and must be ``"cosine"`` (the circle loss's optima and ``α`` are defined on similarities
    in ``[-1, 1]``). Unlike PML, which keeps several ``(N, M)`` float matrices and the int64
    indices of every pair, it holds a few ``(N, M)`` matrices up to ``2^22`` pairs and beyond that
    streams over blocks (memory O(block + (N + M)·D)); ``benchmarks/retrieval.py`` measures both.

    Exact under DDP (``gather_distributed=True`` and a process group of several processes): each
    rank's anchors are contrasted with the references of every rank (the embeddings themselves,
    or ``ref_emb``, gathered with gradients in rank order; their labels too), self pairs found by
    global index. ``per_anchor`` takes its mean over the anchors of every rank (so DDP's averaged
    gradients are those of one process on the concatenated batch); ``global`` gathers every
    rank's two log-sum-exps and returns the same global value on every rank. An
    ``indices_tuple`` holds each rank's *local* indices (anchors into its ``embeddings``,
    positives and negatives into its own references): the result equals one process given the
    concatenated tuples, each rank's offsets added. A dense ``pair_weights`` is then ``(N, M)``
    over the gathered columns; factors ``(row, col)`` stay local (the column factors are gathered).

    Args:
        m: Relaxation ``m`` in ``[0, 1]`` (PML's name).
        gamma: Scale ``γ > 0``.
        aggregate: ``"per_anchor"`` or ``"global"``.
        distance: ``"cosine"`` (the only one the circle loss is defined for; see above).
        detach_alpha: Treat ``α`` as constants (the paper, PML) or differentiate it too (the
            public FundusDR code).
        reduction: ``"mean"`` (over anchors with a positive and a negative), ``"sum"`` or
            ``"none"`` (``per_anchor`` only; ``global`` gives its one scalar for both others).
        gather_distributed: Contrast with every rank's references under ``torch.distributed``.
        chunk_size: Columns per streamed block; setting it forces streaming.

    Shape:
        - embeddings ``(N, D)``, labels ``(N,)``, ref_emb ``(M, D)``, ref_labels ``(M,)``,
          pair_weights ``(N, M)`` or ``((N,), (M,))`` (detached), weights ``(N,)``
          (``per_anchor`` only).
        - Output: scalar, or ``(N,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from qualcl.losses import CircleLoss
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]], requires_grad=True)
        >>> loss = CircleLoss(m=0.25, gamma=16.0)(emb, torch.tensor([0, 0, 1, 1]))
        >>> loss
        tensor(2.5427, grad_fn=<DivBackward0>)
        >>> loss.backward()
        >>> emb.grad.shape
        torch.Size([4, 2])

    Reference:
        Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization", CVPR 2020.
    """

    def __init__(
        self,
        m: float = 0.25,
        gamma: float = 256.0,
        *,
        aggregate: str = "per_anchor",
        distance: str = "cosine",
        detach_alpha: bool = True,
        reduction: str = "mean",
        gather_distributed: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            m=m,
            gamma=gamma,
            aggregate=aggregate,
            distance=distance,
            detach_alpha=detach_alpha,
            reduction=reduction,
            gather_distributed=gather_distributed,
            chunk_size=chunk_size,
            names=("m", "gamma"),
        )

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return (
            f"m={self.m}, gamma={self.gamma}, aggregate={self.aggregate!r}, distance={self.distance!r}, "
            f"detach_alpha={self.detach_alpha}, {self.protocol_repr()}"
        )

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: tuple[Tensor, ...] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
        *,
        weights: Tensor | None = None,
        pair_weights: Tensor | tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Compute the loss; see the class docstring for shapes and :func:`~qualcl.functional.circle_loss`."""
        return self._loss(embeddings, labels, indices_tuple, ref_emb, ref_labels, pair_weights, weights)


def _check_degrees(name: str, degrees: Tensor, n: int) -> Tensor:
    check_float_tensor(name, degrees)
    if tuple(degrees.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(degrees.shape)}")
    finite = torch.isfinite(degrees)
    if not bool(finite.all()) or not bool((degrees > 0).all()):
        bad = degrees[~finite | (degrees <= 0)][:3].tolist()
        raise ValueError(f"{name} must be finite and > 0 (the weights divide by them), got e.g. {bad}")
    return degrees.detach()


class FineTripletLoss(_CircleBase):
    r"""The fine triplet loss: a circle loss whose positive pairs are weighted by mirror relevance degrees.

    The descriptor of a mirror-attention network is ``[horizontal half | vertical half]``; its
    relevance degree ``deg_i`` is the cosine agreement of the two halves
    (:func:`qualcl.functional.relevance_degrees`: clamped to ``[1e-6, 1]``, stop-gradient).
    Positive pair ``(i, j)`` gets the weight

    * ``relevance="mirror_agreement"``: :math:`w_{ij} = \mathrm{deg}_j / \mathrm{deg}_i`, the
      public FundusDR code's ``deg_mat = (1/deg) ⊗ deg`` masked to the positives (active in its
      ``nets/MANet.py`` at commit ``1b050ef``, commented out later; the code differentiates
      through the degrees and does not clamp them, qualcl detaches and clamps them);
    * ``relevance="symmetric"``: :math:`w_{ij} = \sqrt{\mathrm{deg}_i\, \mathrm{deg}_j}` (the
      same trust in both orders of a pair);
    * ``relevance=None``: 1, the plain circle loss with ``γ = scale``,

    which multiplies the scale in the positive term only:

    .. math::
        \ell^{+}_{ij} = -\mathrm{scale}\; w_{ij}\, [1 + m - s_{ij}]_+ (s_{ij} - (1 - m)), \qquad
        \ell^{-}_{ij} = \mathrm{scale}\; [s_{ij} + m]_+ (s_{ij} - m),

    .. math::
        L = \log\Big(1 + \sum_{(i,j) \in P} e^{\ell^{+}_{ij}} \sum_{(i,j) \in N} e^{\ell^{-}_{ij}}\Big)

    over the unordered pairs of the batch (``aggregate="global"``, the code's form), or PML's
    per-anchor form (``aggregate="per_anchor"``). The defaults ``scale = 1``, ``m = 0.25`` are
    the public code's; its ``α`` is not detached, so ``FineTripletLoss(detach_alpha=False)`` is
    that code (with detached degrees). The weights are passed in factorised form
    (``row_i · col_j``), so large batches stream like :class:`CircleLoss`. A ``metric``-family
    loss, exact under DDP as :class:`CircleLoss` (``gather_distributed=True``): the gathered
    references carry the degrees of their own rows (computed, or ``degrees`` / ``ref_degrees``,
    gathered from every rank). Cosine only (``distance="cosine"``), as :class:`CircleLoss`.

    Args:
        margin: Relaxation ``m`` in ``[0, 1]``.
        scale: ``γ > 0``.
        relevance: ``"mirror_agreement"``, ``"symmetric"`` or ``None``.
        aggregate: ``"global"`` (the code) or ``"per_anchor"`` (PML's form).
        distance: ``"cosine"`` (the only one; see :class:`CircleLoss`).
        detach_alpha: Treat ``α`` as constants (True) or differentiate it (False, as the code).
        reduction: As :class:`CircleLoss` (``"none"`` needs ``per_anchor``).
        gather_distributed: Contrast with every rank's references under ``torch.distributed``
            (exact; ``global`` returns the same global value on every rank).
        chunk_size: Columns per streamed block.

    Shape:
        - embeddings ``(N, 2D)`` (an even width is needed when ``relevance`` is set and the
          degrees are computed from it), labels ``(N,)``, ref_emb ``(M, 2D)``, ref_labels
          ``(M,)``; ``degrees`` ``(N,)`` and ``ref_degrees`` ``(M,)`` (finite, ``> 0``) replace
          the computed degrees of the rows and of the reference columns; weights ``(N,)``
          (per-anchor, ``aggregate="per_anchor"`` only).
        - Output: scalar (or ``(N,)`` with ``reduction="none"`` and ``per_anchor``).

    Examples:
        >>> import torch
        >>> from qualcl.losses import FineTripletLoss
        >>> d = torch.tensor([[1.0, 0.2, 0.9, 0.3], [0.9, 0.1, 0.2, 1.0], [0.1, 1.0, 0.2, 0.8], [0.3, 0.9, 1.0, 0.1]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> FineTripletLoss()(d, y), FineTripletLoss(relevance=None)(d, y)
        (tensor(2.4225), tensor(2.4366))

    Reference:
        Fang et al., "Deep metric learning with mirror attention and fine triplet loss for fundus
        image retrieval in ophthalmology", Biomedical Signal Processing and Control 80, 2023; Sun
        et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization", CVPR 2020.
    """

    def __init__(
        self,
        margin: float = 0.25,
        scale: float = 1.0,
        relevance: str | None = "mirror_agreement",
        *,
        aggregate: str = "global",
        distance: str = "cosine",
        detach_alpha: bool = True,
        reduction: str = "mean",
        gather_distributed: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            m=margin,
            gamma=scale,
            aggregate=aggregate,
            distance=distance,
            detach_alpha=detach_alpha,
            reduction=reduction,
            gather_distributed=gather_distributed,
            chunk_size=chunk_size,
            names=("margin", "scale"),
        )
        self.relevance = None if relevance is None else check_choice("relevance", relevance, RELEVANCES)

    @property
    def margin(self) -> float:
        """The relaxation ``m``."""
        return self.m

    @property
    def scale(self) -> float:
        """The scale ``γ``."""
        return self.gamma

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return (
            f"margin={self.margin}, scale={self.scale}, relevance={self.relevance!r}, "
            f"aggregate={self.aggregate!r}, distance={self.distance!r}, detach_alpha={self.detach_alpha}, "
            f"{self.protocol_repr()}"
        )

    def pair_factors(self, degrees: Tensor, ref_degrees: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(row (N,), col (M,))`` with ``w_ij = row_i · col_j`` for these degrees (``None`` without relevance)."""
        if self.relevance is None:
            return None
        if self.relevance == "mirror_agreement":
            return 1.0 / degrees, ref_degrees
        return torch.sqrt(degrees), torch.sqrt(ref_degrees)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: tuple[Tensor, ...] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
        *,
        weights: Tensor | None = None,
        degrees: Tensor | None = None,
        ref_degrees: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss; see the class docstring for shapes."""
        if ref_degrees is not None and ref_emb is None:
            raise ValueError("ref_degrees are the degrees of ref_emb, got ref_degrees without ref_emb")
        factors = None
        if self.relevance is not None:
            if degrees is None:
                rows = relevance_degrees(embeddings)
            else:
                check_embeddings("embeddings", embeddings)
                rows = _check_degrees("degrees", degrees, embeddings.shape[0])
            if ref_emb is None:
                cols = rows
            elif ref_degrees is None:
                cols = relevance_degrees(ref_emb)
            else:
                check_embeddings("ref_emb", ref_emb)
                cols = _check_degrees("ref_degrees", ref_degrees, ref_emb.shape[0])
            factors = self.pair_factors(rows, cols)  # local columns: gathered with the references
        return self._loss(embeddings, labels, indices_tuple, ref_emb, ref_labels, factors, weights)
