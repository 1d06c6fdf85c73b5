"""Thin adapters over torchmetrics: grading and diagnosis metrics, overall and per quality stratum."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_cohen_kappa,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from qualcl._validation import check_class_ids, check_finite, check_float_tensor, check_int, check_integer_tensor
from qualcl.metrics.strata import stratify

__all__ = [
    "binary_auroc",
    "cohen_kappa",
    "confusion_matrix",
    "diagnosis_metrics",
    "grading_metrics",
    "multiclass_auroc_ovo",
    "quadratic_weighted_kappa",
    "stratified_diagnosis_metrics",
    "stratified_grading_metrics",
]


def _check(preds: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``preds`` and ``target``: ``(N,)`` integer class ids in ``[0, num_classes)``, as int64."""
    check_int("num_classes", num_classes, minimum=2)
    target = check_class_ids("target", target, num_classes)
    if isinstance(preds, Tensor) and preds.shape != target.shape:
        raise ValueError(
            f"preds and target must be (N,) class ids of equal length, got {tuple(preds.shape)} "
            f"and {tuple(target.shape)}"
        )
    preds = check_class_ids("preds", preds, num_classes, n=target.shape[0])
    return preds, target


def _with_labels(
    preds: Tensor, target: Tensor, num_classes: int | None, labels: Sequence[int] | None
) -> tuple[Tensor, Tensor, int]:
    """Resolve the ``num_classes`` / ``labels`` contract of the kappa functions (ids of ``labels`` → 0..L-1)."""
    if labels is None:
        if num_classes is None:
            raise ValueError("give num_classes (ids 0..C-1) or labels (the class ids the kappa covers)")
        preds, target = _check(preds, target, num_classes)
        return preds, target, num_classes
    if num_classes is not None:
        raise ValueError(f"give num_classes or labels, not both (got {num_classes} and {list(labels)})")
    ids = [check_int("labels", v, minimum=None) for v in labels]
    if len(ids) < 2 or len(set(ids)) != len(ids):
        raise ValueError(f"labels must list at least two distinct class ids, got {list(labels)}")
    table = torch.tensor(sorted(ids))
    out = []
    for name, x in (("preds", preds), ("target", target)):
        x = check_integer_tensor(name, x, what="class ids")
        if x.ndim != 1:
            raise ValueError(f"{name} must have shape (N,), got {tuple(x.shape)}")
        position = torch.searchsorted(table, x.cpu())
        known = position < len(ids)
        known[known.clone()] = table[position[known]] == x.cpu()[known]
        if not bool(known.all()):
            bad = sorted(set(x.cpu()[~known].tolist()))[:5]
            raise ValueError(f"{name} holds class id(s) {bad} that are not in labels {sorted(ids)}")
        out.append(position)
    preds, target = _check(out[0], out[1], len(ids))
    return preds, target, len(ids)


def quadratic_weighted_kappa(
    preds: Tensor, target: Tensor, num_classes: int | None = None, *, labels: Sequence[int] | None = None
) -> float:
    """Cohen's kappa with quadratic weights (the DR-grading standard; = sklearn's ``weights="quadratic"``).

    The classes are given as ``num_classes`` (ids ``0..C-1``) or as ``labels``, the sorted class ids
    the kappa covers (scikit-learn's ``labels=``; the quadratic weights use their rank, so only
    their order matters). Unlike scikit-learn, which leaves samples with other ids out, an id that
    is not a class raises.

    Args:
        preds: ``(N,)`` predicted class ids (an integer tensor).
        target: ``(N,)`` true class ids.
        num_classes: Number of grades ``C >= 2``.
        labels: The class ids instead of ``num_classes``.

    Returns:
        Kappa in ``[-1, 1]``; ``nan`` when undefined (a single class in both).

    Examples:
        >>> import torch
        >>> quadratic_weighted_kappa(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), 3)
        1.0
    """
    preds, target, c = _with_labels(preds, target, num_classes, labels)
    if preds.numel() == 0:
        return float("nan")
    return float(multiclass_cohen_kappa(preds, target, c, weights="quadratic"))


def cohen_kappa(
    preds: Tensor, target: Tensor, num_classes: int | None = None, *, labels: Sequence[int] | None = None
) -> float:
    """Unweighted Cohen's kappa, for classes without an order (= sklearn's ``cohen_kappa_score``).

    Classes as in :func:`quadratic_weighted_kappa`: ``num_classes`` or ``labels``.

    Args:
        preds: ``(N,)`` predicted class ids (an integer tensor).
        target: ``(N,)`` true class ids.
        num_classes: Number of classes ``C >= 2``.
        labels: The class ids instead of ``num_classes``.

    Returns:
        Kappa in ``[-1, 1]``; ``nan`` when undefined (a single class in both).

    Examples:
        >>> import torch
        >>> cohen_kappa(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 1]), 3)
        0.6363636255264282
    """
    preds, target, c = _with_labels(preds, target, num_classes, labels)
    if preds.numel() == 0:
        return float("nan")
    return float(multiclass_cohen_kappa(preds, target, c))


def grading_metrics(preds: Tensor, target: Tensor, num_classes: int) -> dict[str, float]:
    """QWK, unweighted kappa, accuracy and macro F1 (over the classes present) of class predictions.

    QWK suits ordered grades (DR); ``kappa`` (unweighted) suits unordered classes (chest findings).

    Args:
        preds: ``(N,)`` predicted class ids (an integer tensor; ids outside ``[0, num_classes)`` raise).
        target: ``(N,)`` true class ids.
        num_classes: Number of classes ``>= 2``.

    Returns:
        ``{"qwk", "kappa", "accuracy", "macro_f1", "n"}``.

    Examples:
        >>> import torch
        >>> grading_metrics(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), 3)["accuracy"]
        0.6666666865348816
    """
    preds, target = _check(preds, target, num_classes)
    n = int(preds.numel())
    if n == 0:
        nan = float("nan")
        return {"qwk": nan, "kappa": nan, "accuracy": nan, "macro_f1": nan, "n": 0}
    return {
        "qwk": quadratic_weighted_kappa(preds, target, num_classes),
        "kappa": cohen_kappa(preds, target, num_classes),
        "accuracy": float(multiclass_accuracy(preds, target, num_classes, average="micro")),
        "macro_f1": float(multiclass_f1_score(preds, target, num_classes, average="macro")),
        "n": n,
    }


def stratified_grading_metrics(
    preds: Tensor,
    target: Tensor,
    num_classes: int,
    strata: Tensor,
    strata_names: Sequence[str],
) -> dict[str, dict[str, float]]:
    """:func:`grading_metrics` overall and within each stratum (e.g. image-quality level).

    Args:
        preds: ``(N,)`` predicted class ids.
        target: ``(N,)`` true class ids.
        num_classes: Number of classes.
        strata: ``(N,)`` stratum id of each sample, indexing ``strata_names``.
        strata_names: Name of each stratum id.

    Returns:
        ``{"overall": {...}, name: {...} for each stratum}``; a stratum without samples has ``n`` 0
        and NaN metrics (the rule of :func:`~qualcl.metrics.stratify`).

    Examples:
        >>> import torch
        >>> out = stratified_grading_metrics(torch.tensor([0, 1]), torch.tensor([0, 0]), 2,
        ...                                  torch.tensor([0, 1]), ["Good", "Reject"])
        >>> out["Good"]["accuracy"], out["Reject"]["accuracy"]
        (1.0, 0.0)
    """
    preds, target = _check(preds, target, num_classes)
    strata = check_class_ids("strata", strata, len(strata_names), n=preds.shape[0])
    return stratify(lambda keep: grading_metrics(preds[keep], target[keep], num_classes), strata, strata_names)


def confusion_matrix(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(C, C)`` counts, rows = true class, columns = predicted class."""
    preds, target = _check(preds, target, num_classes)
    return multiclass_confusion_matrix(preds, target, num_classes).to(torch.long)


def _check_scores(probs: Tensor, target: Tensor) -> Tensor:
    """``probs``: finite floating ``(N, C)``, ``C >= 2``; ``target``: ``(N,)`` ids in ``[0, C)`` (returned as int64)."""
    check_float_tensor("probs", probs)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(
            f"probs must be a floating (N, C) tensor of class scores with C >= 2, got {tuple(probs.shape)}"
        )
    check_finite("probs", probs)
    return check_class_ids("target", target, probs.shape[1], n=probs.shape[0])


def binary_auroc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` samples, ties counted as one half.

    The Mann–Whitney form: the probability that a random positive scores above a random negative.
    Equal to ``sklearn.metrics.roc_auc_score(positive, scores)``.

    Args:
        scores: ``(N,)`` real scores (probabilities, logits or hard predictions).
        positive: ``(N,)`` booleans (or 0/1), true for positive samples.

    Returns:
        AUC in ``[0, 1]``; ``nan`` when there are no positives or no negatives.

    Examples:
        >>> import torch
        >>> binary_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    if not isinstance(scores, Tensor) or scores.is_complex() or scores.dtype == torch.bool:
        raise TypeError(f"scores must be a real tensor, got {type(scores).__name__} {getattr(scores, 'dtype', '')}")
    if not isinstance(positive, Tensor) or scores.ndim != 1 or positive.shape != scores.shape:
        raise ValueError(
            f"scores and positive must be (N,) tensors of equal length, got {tuple(scores.shape)} and "
            f"{tuple(getattr(positive, 'shape', ()))}"
        )
    check_finite("scores", scores)
    if positive.dtype != torch.bool and (positive.is_complex() or not bool(((positive == 0) | (positive == 1)).all())):
        raise ValueError("positive must hold booleans or 0/1 values")
    pos = positive.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    x = scores.detach().to(torch.float64).cpu()
    order = torch.argsort(x)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    # average ranks over ties (1-based)
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = float(ranks[pos.cpu()].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def multiclass_auroc_ovo(probs: Tensor, target: Tensor) -> float:
    r"""Macro one-vs-one AUC (Hand & Till, 2001), as ``roc_auc_score(multi_class="ovo", average="macro")``.

    .. math::
        \mathrm{AUC} = \frac{2}{C(C-1)} \sum_{a < b} \tfrac12\big(A(a \mid b) + A(b \mid a)\big)

    where ``A(a | b)`` is the AUC of the score ``p_a`` separating class ``a`` from class ``b`` among
    the samples of these two classes. MKCNet reports this on probabilities for its 3-class sets.
    With two classes it is the ordinary AUC of ``p_1``. Unlike scikit-learn, which refuses a class
    that is absent from ``target``, pairs with an absent class are skipped (so that metrics within a
    quality stratum stay defined); the result is ``nan`` when no pair is left.

    Args:
        probs: ``(N, C)`` class scores (softmax probabilities).
        target: ``(N,)`` class ids in ``[0, C)``.

    Returns:
        The macro one-vs-one AUC, or ``nan``.

    Examples:
        >>> import torch
        >>> probs = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
        >>> round(multiclass_auroc_ovo(probs, torch.tensor([0, 1, 2, 1])), 4)
        0.9583

    Reference:
        Hand and Till, "A Simple Generalisation of the Area Under the ROC Curve for Multiple Class
        Classification Problems", Machine Learning 45, 2001.
    """
    target = _check_scores(probs, target)
    c = probs.shape[1]
    if c == 2:
        return binary_auroc(probs[:, 1], target == 1)
    scores = []
    for a in range(c):
        for b in range(a + 1, c):
            keep = (target == a) | (target == b)
            if not bool((target == a).any()) or not bool((target == b).any()):
                continue
            a_given_b = binary_auroc(probs[keep, a], target[keep] == a)
            b_given_a = binary_auroc(probs[keep, b], target[keep] == b)
            scores.append((a_given_b + b_given_a) / 2)
    return sum(scores) / len(scores) if scores else float("nan")


def diagnosis_metrics(probs: Tensor, target: Tensor, *, legacy_auc: bool = False) -> dict[str, float]:
    """AUC, accuracy and F1 of a diagnosis classifier from its class probabilities (MKCNet's metrics).

    ``auc`` is :func:`multiclass_auroc_ovo` on the probabilities. MKCNet's official code computes
    the AUC of its binary sets (CT-IQAD, CXR-IQAD) on *hard* predictions instead,
    ``roc_auc_score(label, argmax)``; ``legacy_auc=True`` reproduces that for two classes (it changes
    nothing for more). ``macro_f1`` averages over the classes present in ``target`` or the
    predictions; with two classes ``f1`` is the F1 of class 1, the paper's binary F1.

    Args:
        probs: ``(N, C)`` class probabilities.
        target: ``(N,)`` class ids.
        legacy_auc: Hard-label AUC on binary sets, as the official MKCNet evaluation.

    Returns:
        ``{"auc", "accuracy", "macro_f1", "n"}``, plus ``"f1"`` when ``C = 2``; ``nan`` where undefined.

    Examples:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
        >>> diagnosis_metrics(probs, torch.tensor([0, 1, 1]))["auc"]
        1.0
    """
    target = _check_scores(probs, target)
    c = probs.shape[1]
    n = int(target.numel())
    nan = float("nan")
    if n == 0:
        out = {"auc": nan, "accuracy": nan, "macro_f1": nan, "n": 0}
        return {**out, "f1": nan} if c == 2 else out
    preds = probs.argmax(dim=1)
    if legacy_auc and c == 2:
        auc = binary_auroc(preds.to(torch.float64), target == 1)
    else:
        auc = multiclass_auroc_ovo(probs, target)
    out = {
        "auc": auc,
        "accuracy": float((preds == target).to(torch.float64).mean()),
        "macro_f1": float(multiclass_f1_score(preds, target, c, average="macro")),
        "n": n,
    }
    if c == 2:
        tp = int(((preds == 1) & (target == 1)).sum())
        fp = int(((preds == 1) & (target == 0)).sum())
        fn = int(((preds == 0) & (target == 1)).sum())
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan
    return out


def stratified_diagnosis_metrics(
    probs: Tensor,
    target: Tensor,
    strata: Tensor,
    strata_names: Sequence[str],
    *,
    legacy_auc: bool = False,
) -> dict[str, dict[str, float]]:
    """:func:`diagnosis_metrics` overall and within each stratum (e.g. image-quality level).

    Args:
        probs: ``(N, C)`` class probabilities.
        target: ``(N,)`` class ids.
        strata: ``(N,)`` stratum id of each sample, indexing ``strata_names``.
        strata_names: Name of each stratum id.
        legacy_auc: See :func:`diagnosis_metrics`.

    Returns:
        ``{"overall": {...}, name: {...} for each stratum}``; a stratum without samples has ``n`` 0
        and NaN metrics (the rule of :func:`~qualcl.metrics.stratify`).

    Examples:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
        >>> out = stratified_diagnosis_metrics(probs, torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 1, 1]),
        ...                                    ["good", "not good"])
        >>> out["good"]["accuracy"], out["not good"]["accuracy"]
        (1.0, 0.0)
    """
    target = _check_scores(probs, target)
    strata = check_class_ids("strata", strata, len(strata_names), n=target.shape[0])
    return stratify(
        lambda keep: diagnosis_metrics(probs[keep], target[keep], legacy_auc=legacy_auc), strata, strata_names
    )
