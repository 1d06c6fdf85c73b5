"""Multi-level InfoNCE over ordered pairs of quality/disease levels (CoMCL Eq. 1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import (
    check_choice,
    check_embeddings,
    check_int,
    check_integer_tensor,
    check_mask,
    check_nonnegative,
    check_positive,
    check_reduction,
    check_weights,
)
from qualcl.functional.info_nce import compute_dtype, info_nce_from_logits
from qualcl.functional.reduction import weighted_reduce

__all__ = [
    "MinerOutput",
    "MultiLevelResult",
    "NegativeMiner",
    "PairLoss",
    "check_pairs",
    "multi_level_info_nce",
    "validate_levels",
]

NEGATIVE_SOURCES = ("view2", "both")


class MinerOutput(NamedTuple):
    """What a negative miner returns for one block of anchors.

    Attributes:
        negative_mask: ``(b, M)`` bool, True = negative kept, or ``None`` to keep all.
        weights: ``(b,)`` non-negative per-anchor weights (e.g. self-paced selection ``s_i``), or
            ``None`` for all ones.
    """

    negative_mask: Tensor | None
    weights: Tensor | None


@runtime_checkable
class NegativeMiner(Protocol):
    """Restricts negatives and weights anchors given detached similarities.

    Called once per level pair with cosine similarities of the anchors to their positives
    (``(b,)``) and to the candidate negatives (``(b, M)``), the temperature, and the training step.
    The self-paced hard-negative miner of CoMCL (``qualcl.samplers``) implements it.
    """

    def __call__(
        self, positive_sim: Tensor, negative_sim: Tensor, *, temperature: float, step: int | None
    ) -> MinerOutput:
        """Return the kept negatives and the anchor weights for one block."""
        ...


@runtime_checkable
class PairLoss(Protocol):
    """Computes one level pair's per-anchor InfoNCE from its embeddings (e.g. a fused kernel).

    Called with L2-normalised ``anchors`` (``(b, D)``), their ``positives`` (``(b, D)``) and the
    pair's ``negatives`` (``(M, D)``), all in the compute dtype, and the temperature; returns the
    ``(b,)`` losses ``-log(e^{a.p/tau} / (e^{a.p/tau} + sum_k e^{a.n_k/tau}))`` and the ``(b,)``
    float mask of the anchors that count (1 for an anchor with a negative).
    """

    def __call__(
        self, anchors: Tensor, positives: Tensor, negatives: Tensor, *, temperature: float
    ) -> tuple[Tensor, Tensor]:
        """Return the pair's per-anchor losses and which anchors count."""
        ...


class MultiLevelResult(NamedTuple):
    """Per-pair losses and counts of :func:`multi_level_info_nce`.

    Attributes:
        loss: Scalar total ``sum_p w_p L_p``.
        pair_losses: Loss of each pair, keyed ``"m/n"``.
        counts: ``{"m/n": {"anchors": int, "negatives": int}}``, plus ``"selected_anchors"`` (anchors
            with a weight > 0) when a miner returned weights.
    """

    loss: Tensor
    pair_losses: dict[str, Tensor]
    counts: dict[str, dict[str, int]]


def validate_levels(levels: Tensor, n: int, level_names: Sequence[str] | None = None) -> Tensor:
    """Check a ``(N,)`` integer level-id vector (ids in ``[0, len(level_names))`` if given); return it as int64."""
    if level_names is None:
        return check_integer_tensor("levels", levels, shape=(n,), what="level ids")
    ids = check_integer_tensor("levels", levels, shape=(n,), what="level ids")
    unknown = (ids < 0) | (ids >= len(level_names))
    if n and bool(unknown.any()):
        bad = sorted(set(ids[unknown].tolist()))[:5]
        raise ValueError(
            f"levels holds unknown level id(s) {bad}; valid ids are 0..{len(level_names) - 1} "
            f"for level_names {tuple(level_names)}"
        )
    return ids


def check_pairs(
    pairs: Sequence[tuple[int, int]], pair_weights: Sequence[float] | None = None, num_levels: int | None = None
) -> tuple[list[tuple[int, int]], list[float]]:
    """Check ordered level-id pairs and their weights; return them as ``int`` pairs and ``float`` weights.

    A pair is two different level ids ``>= 0`` (``< num_levels`` when given): ``(m, m)`` would use
    same-level negatives, which the multi-level loss has none of. Weights are finite and ``>= 0``,
    one per pair (default all 1).

    Raises:
        TypeError: A pair is not two integers, or a weight is not a number.
        ValueError: No pairs, a same-level or out-of-range pair, or a bad weight.
    """
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError(f"pairs must be a non-empty sequence of (anchor level, negative level) ids, got {pairs!r}")
    maximum = None if num_levels is None else num_levels - 1
    checked = []
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"each of pairs must be an (anchor level, negative level) pair of ids, got {pair!r}")
        m = check_int("pairs: anchor level", pair[0], minimum=0, maximum=maximum)
        k = check_int("pairs: negative level", pair[1], minimum=0, maximum=maximum)
        if m == k:
            raise ValueError(f"pair {tuple(pair)} would use same-level negatives; a pair joins two different levels")
        checked.append((m, k))
    if pair_weights is None:
        return checked, [1.0] * len(checked)
    if len(pair_weights) != len(checked):
        raise ValueError(f"pair_weights must have one weight per pair ({len(checked)}), got {len(pair_weights)}")
    return checked, [check_nonnegative("pair_weights", w) for w in pair_weights]


def multi_level_info_nce(
    view1: Tensor,
    view2: Tensor,
    levels: Tensor,
    pairs: Sequence[tuple[int, int]],
    *,
    temperature: float = 0.07,
    pair_weights: Sequence[float] | None = None,
    negatives_from: str = "view2",
    miner: NegativeMiner | None = None,
    step: int | None = None,
    pair_names: Sequence[str] | None = None,
    pair_loss: PairLoss | None = None,
    negative_pool: tuple[Tensor, Tensor, Tensor] | None = None,
    reduce: Callable[[Tensor, Tensor | None, str], Tensor] | None = None,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> MultiLevelResult:
    r"""Sum of InfoNCE losses over ordered level pairs, negatives drawn only from the paired level.

    For each pair ``(m, n)``: anchors are ``view1[levels == m]``, each anchor's positive is its own
    row of ``view2``, and the negatives are all rows of level ``n`` (from ``view2``, or from both
    views with ``negatives_from="both"``). There are no same-level negatives.

    .. math::
        L = \sum_{(m,n)} w_{mn}\, \frac{\sum_i s_i\, \ell_i^{m,n}}{\sum_i s_i}, \quad
        \ell_i^{m,n} = -\log \frac{e^{s(e_i, \tilde e_i)/\tau}}
        {e^{s(e_i, \tilde e_i)/\tau} + \sum_{k \in K_i} e^{s(e_i, e^n_k)/\tau}}

    where ``s_i`` and ``K_i`` come from the ``miner`` (all ones / all negatives without one), times
    the caller's per-row ``weights``. A pair with no anchors or no negatives contributes a zero that
    stays attached to the graph. ``reduction="sum"`` replaces each pair's weighted mean by its
    weighted sum; ``reduction="none"`` returns the ``(N,)`` per-row totals
    ``sum_{(m,n)} w_{mn} s_i ell_i^{m,n}`` (0 for rows that anchor no pair), whose sum is the
    ``"sum"`` value (the ``"mean"`` value is a sum of per-pair means, not a mean of these rows).

    Args:
        view1: ``(N, D)`` embeddings of the first augmentation.
        view2: ``(N, D)`` embeddings of the second augmentation.
        levels: ``(N,)`` integer level id of each row.
        pairs: Ordered ``(m, n)`` level-id pairs, ``m != n`` (checked by :func:`check_pairs`).
        temperature: ``tau > 0``.
        pair_weights: One finite weight ``>= 0`` per pair (default all 1, the paper's plain sum).
        negatives_from: ``"view2"`` or ``"both"``.
        miner: Optional :class:`NegativeMiner` (self-paced hard-negative mining).
        step: Training step passed to the miner.
        pair_names: Names used as keys (default ``"m/n"`` with ids).
        pair_loss: Optional :class:`PairLoss` that computes each pair's loss instead of the dense
            logits here (``MultiLevelInfoNCE`` passes the fused kernel). Not used with a ``miner``,
            which needs the dense similarity block.
        negative_pool: ``(view1, view2, levels)`` the negatives are drawn from instead of the local
            rows — under DDP the rows gathered from every rank (``MultiLevelInfoNCE`` with
            ``gather_distributed=True``). A pair then counts as empty only when the *pool* has no
            anchor or negative of its levels, so every rank takes the same path (collectives inside
            ``reduce`` and the miner stay matched).
        reduce: ``reduce(losses, weights, reduction) -> scalar``, the per-pair reduction of the
            anchors' losses (default :func:`~qualcl.functional.weighted_reduce`); under DDP a
            reduction across ranks. Not called for ``reduction="none"``.
        weights: ``(N,)`` non-negative per-row weights (multiply the miner's).
        reduction: ``"mean"`` (the paper's sum of per-pair means), ``"sum"`` or ``"none"``.

    Returns:
        A :class:`MultiLevelResult`.

    Examples:
        >>> import torch
        >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
        >>> levels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> out = multi_level_info_nce(z1, z2, levels, [(0, 1), (0, 2), (1, 3)])
        >>> sorted(out.pair_losses)
        ['0/1', '0/2', '1/3']

    Reference:
        CoMCL, "Clinical-oriented Multi-level Contrastive Learning", MICCAI 2024 (Hou et al.), Eq. 1.
    """
    tau = check_positive("temperature", temperature)
    check_embeddings("view1", view1, nonzero=True)
    n, d = view1.shape
    check_embeddings("view2", view2, dim=d, nonzero=True)
    if view2.shape[0] != n:
        raise ValueError(f"view2 must have shape ({n}, {d}) like view1, got {tuple(view2.shape)}")
    levels = validate_levels(levels, n)
    check_choice("negatives_from", negatives_from, NEGATIVE_SOURCES)
    check_reduction(reduction)
    if weights is not None:
        check_weights("weights", weights, n)
        weights = weights.detach().to(view1.device)
    pairs, weights_of_pairs = check_pairs(pairs, pair_weights)
    if pair_names is not None and len(pair_names) != len(pairs):
        raise ValueError(f"pair_names must have one name per pair ({len(pairs)}), got {len(pair_names)}")
    names = [f"{m}/{k}" for m, k in pairs] if pair_names is None else list(pair_names)

    dtype = compute_dtype(view1, view2)
    z1 = F.normalize(view1.to(dtype), dim=1)
    z2 = F.normalize(view2.to(dtype), dim=1)
    anchor_zero = 0.0 * (z1.sum() + z2.sum())
    if negative_pool is None:
        p1, p2, pool_levels = z1, z2, levels
    else:
        p1 = F.normalize(negative_pool[0].to(dtype), dim=1)
        p2 = F.normalize(negative_pool[1].to(dtype), dim=1)
        pool_levels = negative_pool[2]
        anchor_zero = anchor_zero + 0.0 * (p1.sum() + p2.sum())
    if reduce is None:
        reduce = weighted_reduce

    total = anchor_zero.expand(n).clone() if reduction == "none" else anchor_zero
    pair_losses: dict[str, Tensor] = {}
    counts: dict[str, dict[str, int]] = {}
    for index, ((m, k), name) in enumerate(zip(pairs, names, strict=True)):
        rows_m = levels == m
        rows_k = pool_levels == k
        anchors, positives = z1[rows_m], z2[rows_m]
        negatives = p2[rows_k] if negatives_from == "view2" else torch.cat([p1[rows_k], p2[rows_k]])
        pool_anchors = int((pool_levels == m).sum()) if negative_pool is not None else anchors.shape[0]
        if pool_anchors == 0 or negatives.shape[0] == 0:
            loss = anchor_zero
        else:
            row_weights = None if weights is None else weights[rows_m]
            if pair_loss is not None and miner is None and negative_pool is None:
                losses, contrasted = pair_loss(anchors, positives, negatives, temperature=tau)
                row_weights = contrasted if row_weights is None else row_weights.to(contrasted.dtype) * contrasted
            else:
                positive_sim = (anchors * positives).sum(dim=1)
                negative_sim = anchors @ negatives.T
                mask, mined = None, None
                if miner is not None:
                    mask, mined = miner(positive_sim.detach(), negative_sim.detach(), temperature=tau, step=step)
                    if mask is not None:
                        check_mask("miner negative_mask", mask, tuple(negative_sim.shape))
                    if mined is not None:
                        check_weights("miner weights", mined, anchors.shape[0])
                        counts.setdefault(name, {})["selected_anchors"] = int((mined > 0).sum())
                        row_weights = mined if row_weights is None else row_weights.to(mined.dtype) * mined
                losses = info_nce_from_logits(positive_sim / tau, negative_sim / tau, mask)
                if mask is not None:  # an anchor left without negatives has nothing to contrast
                    contrasted = mask.any(dim=1).to(losses.dtype)
                    row_weights = contrasted if row_weights is None else row_weights * contrasted.to(row_weights.dtype)
            if reduction == "none":
                weighted = losses if row_weights is None else losses * row_weights.to(losses.dtype)
                total = total.index_add(0, rows_m.nonzero().flatten(), weights_of_pairs[index] * weighted)
                loss = weighted.sum()
            else:
                loss = reduce(losses, row_weights, reduction)
        if reduction != "none":
            total = total + weights_of_pairs[index] * loss
        pair_losses[name] = loss
        counts.setdefault(name, {}).update(anchors=int(anchors.shape[0]), negatives=int(negatives.shape[0]))
    return MultiLevelResult(total, pair_losses, counts)
