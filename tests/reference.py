"""Naive float64 loop references the primitives must match. Written for clarity, not speed."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _cos(a: list[float], b: list[float]) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def _reduce(losses: list[float], weights: list[float] | None, reduction: str) -> float | list[float]:
    w = weights if weights is not None else [1.0] * len(losses)
    weighted = [li * wi for li, wi in zip(losses, w, strict=True)]
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return sum(weighted)
    return sum(weighted) / sum(w) if sum(w) > 0 else 0.0


def info_nce(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor | None,
    tau: float,
    mask: Tensor | None = None,
    top_k: int | None = None,
    weights: Tensor | None = None,
    reduction: str = "mean",
) -> float | list[float]:
    q, p = query.double().tolist(), positive.double().tolist()
    c = p if negatives is None else negatives.double().tolist()
    losses: list[float] = []
    contrasted: list[float] = []
    for i in range(len(q)):
        pos = _cos(q[i], p[i]) / tau
        kept = []
        for k in range(len(c)):
            if negatives is None and k == i:
                continue
            if mask is not None and not bool(mask[i, k]):
                continue
            kept.append(_cos(q[i], c[k]) / tau)
        if top_k is not None and len(kept) > top_k:
            kth = sorted(kept, reverse=True)[top_k - 1]
            kept = [v for v in kept if v >= kth]
        denominator = math.exp(pos) + sum(math.exp(v) for v in kept)
        losses.append(-math.log(math.exp(pos) / denominator))
        contrasted.append(1.0 if kept else 0.0)  # no negative left: 0, and out of the mean
    w = [1.0] * len(losses) if weights is None else weights.double().tolist()
    return _reduce(losses, [wi * ci for wi, ci in zip(w, contrasted, strict=True)], reduction)


def multi_level(
    view1: Tensor,
    view2: Tensor,
    levels: list[int],
    pairs: list[tuple[int, int]],
    tau: float,
    negatives_from: str = "view2",
    pair_weights: list[float] | None = None,
) -> tuple[float, list[float]]:
    total, per_pair = 0.0, []
    for index, (m, n) in enumerate(pairs):
        anchors = [i for i, lv in enumerate(levels) if lv == m]
        negs = [i for i, lv in enumerate(levels) if lv == n]
        if not anchors or not negs:
            per_pair.append(0.0)
            continue
        candidates = view2[negs] if negatives_from == "view2" else torch.cat([view1[negs], view2[negs]])
        loss = info_nce(view1[anchors], view2[anchors], candidates, tau)
        assert isinstance(loss, float)
        per_pair.append(loss)
        total += (1.0 if pair_weights is None else pair_weights[index]) * loss
    return total, per_pair


def clip(img: Tensor, txt: Tensor, scale: float, labels: list[int] | None = None) -> float:
    i, t = img.double().tolist(), txt.double().tolist()
    n = len(i)
    lab = labels if labels is not None else list(range(n))

    def direction(a: list[list[float]], b: list[list[float]]) -> float:
        total, rows = 0.0, 0
        for r in range(n):
            logits = [scale * _cos(a[r], b[c]) for c in range(n)]
            lse = math.log(sum(math.exp(x) for x in logits))
            positives = [c for c in range(n) if lab[c] == lab[r]]
            if len(positives) == n:  # no negative column: nothing to contrast, out of the mean
                continue
            total += sum(lse - logits[c] for c in positives) / len(positives)
            rows += 1
        return total / rows if rows else 0.0

    return 0.5 * (direction(i, t) + direction(t, i))


def focal(logits: Tensor, target: Tensor, gamma: float) -> list[float]:
    out = []
    for row, tgt in zip(logits.double().tolist(), target.tolist(), strict=True):
        z = [math.exp(v) for v in row]
        probs = [v / sum(z) for v in z]
        y = tgt if isinstance(tgt, list) else [1.0 if c == tgt else 0.0 for c in range(len(row))]
        out.append(-sum(yc * (1 - pc) ** gamma * math.log(pc) for yc, pc in zip(y, probs, strict=True)))
    return out


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / max(norm, 1e-12) for x in v]  # as F.normalize: a zero vector stays zero


def patch_discrimination(features: Tensor, tau: float) -> float:
    """Ye et al.'s criterion as local discrimination writes it, one anchor row at a time."""
    f = [_unit(row) for row in features.double().tolist()]
    n = len(f)
    total = 0.0
    for i in range(n):
        partner = (i + n // 2) % n
        e = {k: math.exp(sum(a * b for a, b in zip(f[i], f[k], strict=True)) / tau) for k in range(n) if k != i}
        z = sum(e.values())
        total += math.log(e[partner] / z)
        total += sum(math.log(1 - e[j] / z) for j in e if j != partner)
    return -total / n


def region_discrimination(embeddings: Tensor, assignments: Tensor, tau: float) -> float:
    """Region features, batch prototypes and the per-region cross-entropy, by loops."""
    e, a = embeddings.double().tolist(), assignments.double().tolist()
    n, d, h, w = embeddings.shape
    k_count = assignments.shape[1]
    pixels = [(y, x) for y in range(h) for x in range(w)]
    regions = []
    for i in range(n):
        units = {p: _unit([e[i][c][p[0]][p[1]] for c in range(d)]) for p in pixels}
        regions.append(
            [
                _unit([sum(a[i][k][y][x] * units[(y, x)][c] for y, x in pixels) / len(pixels) for c in range(d)])
                for k in range(k_count)
            ]
        )
    prototypes = [_unit([sum(regions[i][k][c] for i in range(n)) / n for c in range(d)]) for k in range(k_count)]
    total = 0.0
    for i in range(n):
        for k in range(k_count):
            logits = [
                sum(x * y for x, y in zip(regions[i][k], prototypes[j], strict=True)) / tau for j in range(k_count)
            ]
            total += math.log(sum(math.exp(v) for v in logits)) - logits[k]
    return total / (n * k_count)


def binary_entropy_bits(values: Tensor) -> float:
    flat = values.double().flatten().tolist()
    return sum(-v * math.log2(v) - (1 - v) * math.log2(1 - v) if 0 < v < 1 else 0.0 for v in flat) / len(flat)
