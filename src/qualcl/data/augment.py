"""Seeded, batched photometric augmentation: ColorJitter and RandomGrayscale with per-image parameters.

torchvision's ``ColorJitter`` draws its factors from the global RNG, one image at a time. Here the
parameters are drawn per image from an explicit ``torch.Generator`` (so a data pipeline seeded by
``(seed, epoch, index)`` is reproducible and resumes exactly) and applied to a whole batch at once
on its device (one vectorised pass instead of one call per image). The operations follow
torchvision's functional definitions: brightness scales, contrast and saturation blend with the
grey image (its mean for contrast), hue rotates the HSV hue, each clamped to ``[0, 1]``, in a
random order per image, as ``ColorJitter`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ColorJitterSpec", "apply_color_jitter", "hsv_to_rgb", "item_generator", "rgb_to_grey", "rgb_to_hsv"]

#: Columns of a parameter row: four factors, the order of the four operations, the grey flag.
PARAMS = 9


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of dataset item ``index`` in ``epoch``: every random choice of the item comes from it.

    Seeding each item from ``(seed, epoch, index)`` makes a data pipeline reproducible whatever the
    number of workers, and a resumed run draws exactly the items it would have drawn.

    Examples:
        >>> a = torch.rand(2, generator=item_generator(0, 1, 5))
        >>> torch.equal(a, torch.rand(2, generator=item_generator(0, 1, 5)))
        True
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + index)


def rgb_to_grey(images: Tensor) -> Tensor:
    """``(N, 3, H, W)`` → ``(N, 1, H, W)`` ITU-R 601-2 luma (torchvision's ``rgb_to_grayscale``)."""
    r, g, b = images.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def rgb_to_hsv(images: Tensor) -> Tensor:
    """``(N, 3, H, W)`` RGB in ``[0, 1]`` → HSV with hue in ``[0, 1)``."""
    r, g, b = images.unbind(dim=-3)
    high, low = images.amax(dim=-3), images.amin(dim=-3)
    span = high - low
    flat = span == 0
    safe = torch.where(flat, torch.ones_like(span), span)
    saturation = torch.where(
        high > 0, span / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(high)
    )
    hue = torch.where(high == r, (g - b) / safe, torch.where(high == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = torch.where(flat, torch.zeros_like(hue), hue / 6.0).remainder(1.0)
    return torch.stack((hue, saturation, high), dim=-3)


def hsv_to_rgb(images: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = images.unbind(dim=-3)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    index = sector.long().remainder(6)
    choices = (
        torch.stack((v, t, p), -3),
        torch.stack((q, v, p), -3),
        torch.stack((p, v, t), -3),
        torch.stack((p, q, v), -3),
        torch.stack((t, p, v), -3),
        torch.stack((v, p, q), -3),
    )
    out = choices[0]
    for k in range(1, 6):
        out = torch.where((index == k).unsqueeze(-3), choices[k], out)
    return out


@dataclass(frozen=True)
class ColorJitterSpec:
    """Strengths of a ColorJitter (+ RandomGrayscale), and the per-image parameter draw.

    Factors are drawn as torchvision does: brightness, contrast, saturation uniformly in
    ``[max(0, 1 − s), 1 + s]``, hue uniformly in ``[−h, h]``; the order of the four operations is
    a random permutation; the image is turned grey with probability ``grayscale``.

    Attributes:
        brightness: ``s`` of brightness.
        contrast: ``s`` of contrast.
        saturation: ``s`` of saturation.
        hue: ``h`` of hue, at most 0.5.
        grayscale: Probability of a grey image.

    Examples:
        >>> import torch
        >>> spec = ColorJitterSpec(0.2, 0.2, 0.2, 0.02)
        >>> params = spec.sample(torch.Generator().manual_seed(0))
        >>> params.shape, apply_color_jitter(torch.rand(1, 3, 4, 4), params[None]).shape
        (torch.Size([9]), torch.Size([1, 3, 4, 4]))
    """

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    grayscale: float = 0.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation", "grayscale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {self.hue}")
        if self.grayscale > 1:
            raise ValueError(f"grayscale is a probability, got {self.grayscale}")

    def sample(self, generator: torch.Generator) -> Tensor:
        """One image's parameters: ``(9,)`` = brightness, contrast, saturation, hue, order (4), grey flag."""
        u = torch.rand(4, generator=generator, dtype=torch.float64)
        factors = [
            max(0.0, 1 - s) + float(u[i]) * (1 + s - max(0.0, 1 - s))
            for i, s in enumerate((self.brightness, self.contrast, self.saturation))
        ]
        hue = -self.hue + float(u[3]) * 2 * self.hue
        order = torch.randperm(4, generator=generator).tolist()
        grey = float(torch.rand((), generator=generator) < self.grayscale) if self.grayscale > 0 else 0.0
        return torch.tensor([*factors, hue, *order, grey], dtype=torch.float32)


def _one(images: Tensor, op: int, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1).to(images.dtype)
    if op == 0:
        return (images * f).clamp(0, 1)
    if op == 1:
        mean = rgb_to_grey(images).mean(dim=(-3, -2, -1), keepdim=True)
        return (f * images + (1 - f) * mean).clamp(0, 1)
    if op == 2:
        return (f * images + (1 - f) * rgb_to_grey(images)).clamp(0, 1)
    hsv = rgb_to_hsv(images)
    hue = (hsv[:, :1] + f).remainder(1.0)
    return hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1)).clamp(0, 1)


def apply_color_jitter(images: Tensor, params: Tensor) -> Tensor:
    """Apply per-image ColorJitter parameters to a batch.

    Args:
        images: ``(N, 3, H, W)`` float RGB in ``[0, 1]``.
        params: ``(N, 9)`` rows of :meth:`ColorJitterSpec.sample`.

    Returns:
        ``(N, 3, H, W)`` augmented images in ``[0, 1]``.
    """
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images must be (N, 3, H, W) float, got {images.dtype} {tuple(images.shape)}")
    if params.shape != (images.shape[0], PARAMS):
        raise ValueError(f"params must be ({images.shape[0]}, {PARAMS}), got {tuple(params.shape)}")
    params = params.to(images.device)
    order = params[:, 4:8].long()
    neutral = torch.tensor([1.0, 1.0, 1.0, 0.0], device=images.device)
    out = images.clone()
    for position in range(4):
        for op in range(4):
            chosen = torch.nonzero((order[:, position] == op) & (params[:, op] != neutral[op])).flatten()
            if chosen.numel():
                out[chosen] = _one(out[chosen], op, params[chosen, op])
    grey = params[:, 8] > 0.5
    if bool(grey.any()):
        out = torch.where(grey.view(-1, 1, 1, 1), rgb_to_grey(out).expand_as(out), out)
    return out
