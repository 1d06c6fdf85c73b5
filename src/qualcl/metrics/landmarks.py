"""Landmark metrics: radial errors, their mean and the success detection rate within a radius."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from qualcl._validation import check_finite, check_float_tensor, check_number

__all__ = ["landmark_metrics", "radial_errors"]


def radial_errors(pred: Tensor, target: Tensor, *, spacing: float = 1.0) -> Tensor:
    r"""Euclidean distance between predicted and true landmark points, ``‖p_i − t_i‖₂ · spacing``.

    Args:
        pred: ``(N, 2)`` predicted points (``x, y``), in pixels.
        target: ``(N, 2)`` true points.
        spacing: Size of a pixel (e.g. mm per px) to report errors in physical units.

    Returns:
        ``(N,)`` float64 errors.

    Examples:
        >>> import torch
        >>> radial_errors(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])).tolist()
        [5.0]
    """
    spacing = check_number("spacing", spacing, minimum=0.0, exclusive_minimum=True)
    for name, x in (("pred", pred), ("target", target)):
        check_float_tensor(name, x)
        if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] == 0:
            raise ValueError(f"{name} must be (N, 2) points with N >= 1, got shape {tuple(x.shape)}")
        check_finite(name, x)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    errors: Tensor = (pred.double() - target.double()).norm(dim=1) * spacing
    return errors


def landmark_metrics(
    pred: Tensor, target: Tensor, *, radii: Sequence[float] = (2.0, 4.0, 8.0), spacing: float = 1.0
) -> dict[str, float]:
    """Mean radial error (``mre``, its ``mre_std``) and the success detection rate ``sdr@r`` per radius.

    ``sdr@r`` is the fraction of images whose error is at most ``r`` (in the units of ``spacing``).

    Examples:
        >>> import torch
        >>> out = landmark_metrics(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.zeros(2, 2), radii=[1.0])
        >>> round(out["mre"], 3), out["sdr@1"]
        (0.707, 0.5)
    """
    errors = radial_errors(pred, target, spacing=spacing)
    out = {
        "mre": float(errors.mean()),
        "mre_std": float(errors.std(unbiased=True)) if errors.numel() > 1 else 0.0,
    }
    for r in radii:
        r = check_number("radii", r, minimum=0.0)
        out[f"sdr@{r:g}"] = float((errors <= r).double().mean())
    return out
