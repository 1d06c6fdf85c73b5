"""One-shot landmark localisation with pixel embeddings (qualcl's design; the paper's text is not public).

The paper names a "center-sensitive one-shot landmark localization" without a public description
or code, so this is qualcl's own reading of it, labelled as such: every embedding map is averaged
with Gaussian weights around each pixel (:func:`center_weighted_embeddings`), the template is that
centre-weighted vector at the landmark of one labelled image (:func:`landmark_template`), and a
target's prediction is the pixel whose centre-weighted vector is most similar to the template
(:func:`localise_landmarks`). Template and queries are built the same way, so a target that
contains the labelled image's neighbourhood of the landmark is localised exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import check_embeddings, check_feature_map, check_float_tensor, check_number

__all__ = ["LandmarkPrediction", "center_weighted_embeddings", "landmark_template", "localise_landmarks"]


class LandmarkPrediction(NamedTuple):
    """Predicted points and the similarity maps they are the peaks of.

    Attributes:
        points: ``(N, 2)`` float ``(x, y)`` pixel coordinates (column, row) of each peak.
        similarity: ``(N, H, W)`` cosine similarity of every pixel to the template.
    """

    points: Tensor
    similarity: Tensor


def _gaussian(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def center_weighted_embeddings(embeddings: Tensor, sigma: float = 2.0) -> Tensor:
    r"""Each pixel's Gaussian-weighted average of the unit embeddings around it, L2-normalised.

    .. math::
        \bar e(p) = \frac{\sum_q w(q - p)\, e(q)}{\lVert \sum_q w(q - p)\, e(q) \rVert}, \quad
        w(d) \propto e^{-\lVert d \rVert^2 / 2\sigma^2}

    over a window of radius ``⌈3σ⌉`` (zero outside the map); ``sigma = 0`` keeps the pixel's own
    (normalised) embedding.

    Args:
        embeddings: ``(N, D, H, W)`` pixel embeddings.
        sigma: Gaussian width in pixels ``>= 0``.

    Returns:
        ``(N, D, H, W)`` unit vectors.

    Examples:
        >>> import torch
        >>> center_weighted_embeddings(torch.randn(1, 4, 8, 8), sigma=1.0).norm(dim=1).allclose(torch.ones(1, 8, 8))
        True
    """
    check_feature_map("embeddings", embeddings)
    sigma = check_number("sigma", sigma, minimum=0.0)
    e = F.normalize(embeddings, dim=1)
    if sigma == 0:
        return e
    g = _gaussian(sigma, e.dtype, e.device)
    d, r = e.shape[1], (g.numel() - 1) // 2
    e = F.conv2d(e, g.view(1, 1, -1, 1).expand(d, 1, -1, 1), padding=(r, 0), groups=d)
    e = F.conv2d(e, g.view(1, 1, 1, -1).expand(d, 1, 1, -1), padding=(0, r), groups=d)
    return F.normalize(e, dim=1)


def _pixel(points: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    x = points[:, 0].round().long()
    y = points[:, 1].round().long()
    if bool((x < 0).any() | (x >= w).any() | (y < 0).any() | (y >= h).any()):
        raise ValueError(f"points must lie inside the {w} × {h} map (x in [0, {w - 1}], y in [0, {h - 1}])")
    return x, y


def landmark_template(embeddings: Tensor, points: Tensor, *, sigma: float = 2.0) -> Tensor:
    """The centre-weighted embedding at each labelled landmark (rounded to the nearest pixel).

    Args:
        embeddings: ``(N, D, H, W)`` embedding maps of the labelled images (one for one-shot).
        points: ``(N, 2)`` landmark ``(x, y)`` in the maps' pixels.
        sigma: Width of the centre weighting (pixels).

    Returns:
        ``(N, D)`` unit templates (average several and normalise for a few-shot template).

    Examples:
        >>> import torch
        >>> landmark_template(torch.randn(1, 4, 8, 8), torch.tensor([[3.0, 5.0]])).shape
        torch.Size([1, 4])
    """
    check_feature_map("embeddings", embeddings)
    check_float_tensor("points", points)
    if points.shape != (embeddings.shape[0], 2):
        raise ValueError(f"points must be ({embeddings.shape[0]}, 2) (x, y) per map, got {tuple(points.shape)}")
    x, y = _pixel(points, embeddings.shape[2], embeddings.shape[3])
    weighted = center_weighted_embeddings(embeddings, sigma)
    return weighted[
        torch.arange(embeddings.shape[0], device=weighted.device), :, y.to(weighted.device), x.to(weighted.device)
    ]


def localise_landmarks(template: Tensor, embeddings: Tensor, *, sigma: float = 2.0) -> LandmarkPrediction:
    """The pixel of each target whose centre-weighted embedding is most similar to ``template``.

    Args:
        template: ``(D,)`` (or ``(1, D)``) template from :func:`landmark_template`.
        embeddings: ``(N, D, H, W)`` embedding maps of the targets.
        sigma: The same centre weighting as the template's.

    Returns:
        :class:`LandmarkPrediction` with ``(N, 2)`` ``(x, y)`` peaks and the ``(N, H, W)`` maps
        (ties go to the first pixel in row-major order).

    Examples:
        >>> import torch
        >>> maps = torch.randn(2, 4, 8, 8)
        >>> t = landmark_template(maps[:1], torch.tensor([[3.0, 5.0]]))[0]
        >>> localise_landmarks(t, maps[:1]).points.tolist()
        [[3.0, 5.0]]
    """
    check_feature_map("embeddings", embeddings)
    if isinstance(template, Tensor) and template.ndim == 1:
        template = template[None]
    check_embeddings("template", template, dim=embeddings.shape[1], nonzero=True)
    if template.shape[0] != 1:
        raise ValueError(f"template must be one (D,) vector, got shape {tuple(template.shape)}")
    weighted = center_weighted_embeddings(embeddings, sigma)
    t = F.normalize(template.to(weighted.dtype), dim=1)[0].to(weighted.device)
    similarity = torch.einsum("ndhw,d->nhw", weighted, t)
    flat = similarity.flatten(1).argmax(dim=1)
    w = similarity.shape[2]
    points = torch.stack([flat % w, flat // w], dim=1).to(torch.float32)
    return LandmarkPrediction(points, similarity)
