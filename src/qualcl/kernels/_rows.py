"""Per-row InfoNCE algebra shared by every implementation: O(N) work on the kernels' row statistics.

A kernel pass over the candidates yields, for each row ``i``, the log-sum-exp ``lse_i`` of its
denominator logits (positive and kept negative columns), the sum ``possum_i`` of its positive-column
logits and their count ``npos_i``. With an optional separate positive logit ``p_i``::

    total_i = logaddexp(lse_i, p_i)          (lse_i without p)
    loss_i  = total_i - (possum_i + p_i) / (npos_i + 1)   (0 for a row without positives)

Backward needs ``d loss_i / d lse_i``, ``d loss_i / d possum_i`` and ``d loss_i / d p_i`` (computed
here) times the upstream gradient of each row (which the reduction decides).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "RowCoefficients",
    "row_coefficients",
    "row_losses",
    "row_totals",
    "unit_rows",
    "upstream_row_grad",
    "weight_grad",
]


def row_totals(lse: Tensor, npos: Tensor, positive_logit: Tensor | None) -> tuple[Tensor, Tensor]:
    """Full log-sum-exp (with the separate positive) and number of positives of each row."""
    if positive_logit is None:
        return lse, npos
    return torch.logaddexp(lse, positive_logit), npos + 1


def row_losses(
    lse: Tensor, possum: Tensor, npos: Tensor, positive_logit: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row losses from the row statistics.

    Args:
        lse: ``(N,)`` log-sum-exp over the denominator columns (``-inf`` when none).
        possum: ``(N,)`` sum of the positive-column logits.
        npos: ``(N,)`` number of positive columns (floating).
        positive_logit: ``(N,)`` separate positive logit, or ``None``.

    Returns:
        ``(loss, total, count)``, each ``(N,)``: the losses, the full log-sum-exp and the number of
        positives per row.
    """
    total, count = row_totals(lse, npos, positive_logit)
    numerator = possum if positive_logit is None else possum + positive_logit
    loss = torch.where(count > 0, total - numerator / count.clamp(min=1), torch.zeros_like(total))
    return loss, total, count


class RowCoefficients(NamedTuple):
    """Gradient coefficients of one row, already multiplied by the row's upstream gradient.

    ``dS_ij = lse_i * exp(s_ij - lse_ij) [j in denominator] + positive_i [j positive]``, and
    ``d loss / d p_i = positive_logit_i``.
    """

    lse: Tensor
    positive: Tensor
    positive_logit: Tensor | None


def row_coefficients(
    grad: Tensor, lse: Tensor, total: Tensor, count: Tensor, positive_logit: Tensor | None
) -> RowCoefficients:
    """Coefficients of the logit gradient for upstream row gradients ``grad`` (``(N,)``)."""
    has = count > 0
    inverse = torch.where(has, 1.0 / count.clamp(min=1), torch.zeros_like(count))
    share = torch.where(has, torch.exp(lse - total), torch.zeros_like(lse))
    d_positive = None
    if positive_logit is not None:
        d_positive = grad * torch.where(has, torch.exp(positive_logit - total) - inverse, torch.zeros_like(total))
    return RowCoefficients(grad * share, -grad * inverse, d_positive)


def _denominator(weights: Tensor | None, n: int, like: Tensor) -> Tensor:
    if weights is None:
        return like.new_tensor(float(max(n, 1)))
    total = weights.to(like.dtype).sum()
    return total.where(total > 0, total.new_ones(()))


def upstream_row_grad(grad: Tensor, weights: Tensor | None, reduction: str, losses: Tensor) -> Tensor:
    """``d output / d loss_i`` times ``grad`` for the weighted reduction of :func:`weighted_reduce`."""
    w = None if weights is None else weights.to(losses.dtype)
    if reduction == "none":
        return grad if w is None else grad * w
    scale = grad if reduction == "sum" else grad / _denominator(weights, losses.shape[0], losses)
    return scale.expand_as(losses) if w is None else scale * w


def weight_grad(grad: Tensor, weights: Tensor, reduction: str, losses: Tensor, output: Tensor) -> Tensor:
    """Gradient of the reduced output with respect to ``weights`` (``(N,)``)."""
    if reduction in ("none", "sum"):
        return (grad * losses).to(weights.dtype)
    total = weights.to(losses.dtype).sum()
    denominator = _denominator(weights, losses.shape[0], losses)
    mean = torch.where(total > 0, output, torch.zeros_like(output))
    return (grad * (losses - mean) / denominator).to(weights.dtype)


class _UnitRows(torch.autograd.Function):
    """``F.normalize(x, dim=1)``, bitwise, with a backward of three passes over ``x`` (autograd's takes about eight).

    ``y = x / max(|x|, eps)``; ``dx = (dy - y <y, dy>) / |x|`` (``dy / eps`` where the norm was clamped).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        norm = x.norm(2, 1, keepdim=True)
        denom = norm.clamp_min(1e-12)
        y: Tensor = x / denom.expand_as(x)
        ctx.save_for_backward(y, denom, norm >= 1e-12)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        y, denom, unclamped = ctx.saved_tensors
        dot = torch.linalg.vecdot(y, grad, dim=1).unsqueeze(1) * unclamped
        dx: Tensor = torch.addcmul(grad, y, dot, value=-1).div_(denom)
        return dx


def unit_rows(x: Tensor, norms: Tensor | None = None) -> Tensor:
    """``F.normalize(x, dim=1)``: the same values, a cheaper backward, or from row norms computed before.

    Args:
        x: ``(N, D)`` rows.
        norms: ``(N,)`` ``torch.linalg.vector_norm(x, dim=1)`` when the caller has them (no gradient
            flows through this path): one pass over ``x`` instead of two.
    """
    if norms is not None:
        return x / norms.clamp_min(1e-12)[:, None].expand_as(x)
    if torch.is_grad_enabled() and x.requires_grad:
        out: Tensor = _UnitRows.apply(x)
        return out
    return torch.nn.functional.normalize(x, dim=1)
