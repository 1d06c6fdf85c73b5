"""Fundus image-quality degradations after Shen et al. (TMI 2021), with recorded parameters.

Three factors, re-implemented from the description in the paper (and ``docs/data.md``),
each returning the degraded image and the parameters it used:

- **illumination** (type bit ``'001'``): colour jitter (brightness 0.7–1.2, contrast 0.6–1.4,
  saturation 0.6–1.4), a Gaussian-blurred tinted *halo* ring, and a dark blurred *hole* of diameter
  0.4–0.7·W that lowers the brightness by about 0.26–0.28 where the mean colour is above 0.25 (so it
  darkens the background towards the colour of dark lesions and hides haemorrhages);
- **spot** (``'010'``): 5–10 bright blurred discs of radius 0.01–0.05·H with opacity
  ``1 − exp(−β·m)`` (``m`` the blurred disc);
- **blur** (``'100'``): Gaussian blur with σ 5–15 px at 512 px, scaled with the image width.

Every factor has a ``"mild"`` and a ``"strong"`` sub-range; the three-level EyeQ-like quality is
Good = no factor, Usable = exactly one mild factor, Reject = a strong factor or two or more factors.
All operations act inside the field of view (FOV) and leave the outside black.

Images are ``(H, W, 3)`` float arrays in ``[0, 1]`` (``uint8`` is accepted and scaled); results are
``float32``. Randomness comes only from the ``numpy.random.Generator`` passed in, so a degradation is
reproducible from its generator state, and :func:`apply_degradation` re-applies recorded parameters
without any randomness.

Reference:
    Z. Shen, H. Fu, J. Shen, L. Shao, "Modeling and Enhancing Low-Quality Retinal Fundus Images",
    IEEE TMI 40(3), 2021 (degradation model of Sec. III). EyeQ levels: Fu et al., MICCAI 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

if TYPE_CHECKING:
    from qualcl.data.table import ImageTable

__all__ = [
    "FACTORS",
    "FACTOR_CODES",
    "QUALITY_NAMES",
    "SEVERITIES",
    "apply_degradation",
    "degrade_blur",
    "degrade_illumination",
    "degrade_image",
    "degrade_spots",
    "degrade_tensor",
    "factor_labels",
    "fov_mask",
    "gaussian_blur",
    "quality_from_params",
    "quality_index",
    "raise_low_quality",
    "sample_degradation",
    "type_code",
]

#: The three degradation factors, in the order they are applied (and of :func:`factor_labels`). Each
#: has one sampler and one applier, listed in ``_FACTOR_FUNCTIONS`` in this order.
FACTORS: tuple[str, ...] = ("blur", "illumination", "spot")

#: Shen et al.'s type code bit of each factor; a combination is the bitwise OR (``'101'`` = blur +
#: illumination, ``'111'`` = all three).
FACTOR_CODES: dict[str, str] = {"illumination": "001", "spot": "010", "blur": "100"}

#: EyeQ quality names by code (0 best).
QUALITY_NAMES: tuple[str, ...] = ("good", "usable", "reject")

#: Severity of one factor.
SEVERITIES: tuple[str, ...] = ("mild", "strong")

Severity = Literal["mild", "strong", "any"]
Params = dict[str, Any]
FloatImage = NDArray[np.float32]
BoolMask = NDArray[np.bool_]

# Parameter ranges per severity; the union of "mild" and "strong" is the paper's range.
_BLUR_SIGMA_512 = {"mild": (5.0, 9.0), "strong": (9.0, 15.0)}
_SPOT_COUNT = {"mild": (5, 7), "strong": (8, 10)}
_SPOT_RADIUS = {"mild": (0.01, 0.03), "strong": (0.025, 0.05)}
_SPOT_BETA = {"mild": (0.8, 1.6), "strong": (1.6, 3.0)}
_HOLE_DEPTH = {"mild": (0.12, 0.2), "strong": (0.26, 0.28)}
_HALO_ALPHA = {"mild": (0.1, 0.25), "strong": (0.25, 0.5)}
_HOLE_GATE = 0.25  # the hole darkens only where the mean colour is above this (soft, ±0.05)
_MIN_SIDE = 8


# --------------------------------------------------------------------------------------------------
# Input checks and small helpers
# --------------------------------------------------------------------------------------------------


def _as_image(image: NDArray[Any], name: str = "image") -> FloatImage:
    """Return ``image`` as a float32 ``(H, W, 3)`` array in ``[0, 1]`` or raise naming ``name``."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of shape (H, W, 3), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got shape {image.shape}")
    if image.shape[0] < _MIN_SIDE or image.shape[1] < _MIN_SIDE:
        raise ValueError(f"{name} must be at least {_MIN_SIDE}x{_MIN_SIDE} pixels, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 or floating point, got dtype {image.dtype}")
    out = np.asarray(image, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains non-finite values")
    low, high = float(out.min()), float(out.max())
    if low < -1e-6 or high > 1.0 + 1e-6:
        raise ValueError(f"{name} must lie in [0, 1] (float) or be uint8, got values in [{low:.4g}, {high:.4g}]")
    return np.clip(out, 0.0, 1.0)


def _check_fov(fov: NDArray[Any] | None, image: FloatImage, name: str = "fov") -> BoolMask:
    if fov is None:
        return fov_mask(image)
    if not isinstance(fov, np.ndarray) or fov.shape != image.shape[:2]:
        shape = getattr(fov, "shape", type(fov).__name__)
        raise ValueError(f"{name} must be a boolean array of shape {image.shape[:2]}, got {shape}")
    mask = np.asarray(fov, dtype=bool)
    if not mask.any():
        raise ValueError(f"{name} is empty: the field of view must contain at least one pixel")
    return mask


def _check_generator(rng: np.random.Generator, name: str = "rng") -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{name} must be a numpy.random.Generator, got {type(rng).__name__}")


def _check_severity(severity: str) -> None:
    if severity not in ("mild", "strong", "any"):
        raise ValueError(f"severity must be 'mild', 'strong' or 'any', got {severity!r}")


def _pick_severity(severity: Severity, rng: np.random.Generator) -> str:
    _check_severity(severity)
    if severity == "any":
        return SEVERITIES[int(rng.integers(0, 2))]
    return severity


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _geometry(fov: BoolMask) -> tuple[float, float, float]:
    """Centre ``(x, y)`` and radius of the FOV, from its centroid and area."""
    ys, xs = np.nonzero(fov)
    return float(xs.mean()), float(ys.mean()), math.sqrt(xs.size / math.pi)


def _soft_disc(shape: tuple[int, int], cx: float, cy: float, radius: float, sigma: float) -> FloatImage:
    """A disc of ``radius`` blurred by a Gaussian of ``sigma``: the normal CDF of the edge distance.

    Uses the logistic approximation ``Φ(t) ≈ 1 / (1 + exp(−1.702 t))`` of the 1-D edge profile.
    """
    ys = np.arange(shape[0], dtype=np.float32)[:, None]
    xs = np.arange(shape[1], dtype=np.float32)[None, :]
    distance = np.sqrt((xs - np.float32(cx)) ** 2 + (ys - np.float32(cy)) ** 2)
    t = (np.float32(radius) - distance) / np.float32(max(sigma, 1e-3))
    return np.asarray(1.0 / (1.0 + np.exp(np.clip(-1.702 * t, -60.0, 60.0))), dtype=np.float32)


def fov_mask(image: NDArray[Any], threshold: float = 10.0 / 255.0) -> BoolMask:
    """Field of view of a fundus photograph: pixels whose brightest channel exceeds ``threshold``.

    Args:
        image: ``(H, W, 3)`` float image in ``[0, 1]`` or ``uint8``.
        threshold: Brightness (in ``[0, 1]``) above which a pixel belongs to the FOV.

    Returns:
        ``(H, W)`` boolean mask.

    Raises:
        ValueError: ``image`` has the wrong shape or values, or no pixel is above ``threshold``.

    Examples:
        >>> import numpy as np
        >>> img = np.zeros((16, 16, 3), np.float32); img[4:12, 4:12] = 0.5
        >>> int(fov_mask(img).sum())
        64
    """
    array = _as_image(image)
    mask: BoolMask = array.max(axis=2) > threshold
    if not mask.any():
        raise ValueError(f"image has no field of view: no pixel is brighter than threshold={threshold:.4g}")
    return mask


def _kernel_spectrum(n: int, sigma: float, reach: int, real: bool) -> NDArray[np.float64]:
    """Spectrum of a Gaussian kernel truncated at ``reach`` and wrapped onto ``n`` samples."""
    offsets = np.arange(-reach, reach + 1)
    kernel = np.zeros(n, dtype=np.float64)
    np.add.at(kernel, offsets % n, np.exp(-0.5 * (offsets / sigma) ** 2))
    spectrum = np.fft.rfft(kernel) if real else np.fft.fft(kernel)
    return np.asarray(spectrum.real, dtype=np.float64)  # symmetric kernel: real spectrum


def _fft_blur(planes: FloatImage, sigma: float) -> FloatImage:
    """Zero-padded linear convolution of every channel of ``(H, W, C)`` with a Gaussian (via FFT).

    The kernel is truncated at 4σ and the image padded by as much, so the circular FFT
    convolution equals the linear one. numpy's FFT runs on one thread, so the result does not depend
    on BLAS threading and is fast even on a busy machine.
    """
    h, w, _ = planes.shape
    reach = max(1, math.ceil(4.0 * sigma))
    shape = (h + 2 * reach, w + 2 * reach)
    padded = np.zeros((planes.shape[2], *shape), dtype=np.float32)
    padded[:, reach : reach + h, reach : reach + w] = planes.transpose(2, 0, 1)
    spectrum = np.fft.rfft2(padded)
    spectrum *= _kernel_spectrum(shape[0], sigma, reach, real=False)[:, None]
    spectrum *= _kernel_spectrum(shape[1], sigma, reach, real=True)[None, :]
    out = np.fft.irfft2(spectrum, s=shape)[:, reach : reach + h, reach : reach + w]
    return np.ascontiguousarray(out.transpose(1, 2, 0), dtype=np.float32)


def gaussian_blur(image: NDArray[Any], sigma: float, *, mask: NDArray[Any] | None = None) -> FloatImage:
    """Gaussian blur by normalised convolution inside ``mask`` (FFT, kernel truncated at 4σ).

    ``blur(x · m) / blur(m)`` inside the mask and 0 outside, so the image darkens neither at its
    borders nor at the FOV edge and nothing leaks in from outside.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float array.
        sigma: Standard deviation in pixels (> 0).
        mask: ``(H, W)`` boolean region to blur within; the whole image when ``None``.

    Returns:
        float32 array of ``image``'s shape.

    Examples:
        >>> import numpy as np
        >>> img = np.zeros((21, 21), np.float32); img[10, 10] = 1.0
        >>> out = gaussian_blur(img, 1.0)
        >>> round(float(out.sum()), 3), round(float(out[10, 10]), 3)
        (1.0, 0.159)
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    array = np.asarray(image, dtype=np.float32)
    if array.ndim not in (2, 3):
        raise ValueError(f"image must have shape (H, W) or (H, W, C), got shape {array.shape}")
    planes = array[:, :, None] if array.ndim == 2 else array
    h, w = planes.shape[:2]
    if mask is None:
        weight = np.ones((h, w), dtype=np.float32)
    else:
        if mask.shape != (h, w):
            raise ValueError(f"mask must have shape {(h, w)}, got {mask.shape}")
        weight = np.asarray(mask, dtype=np.float32)
    stacked = np.concatenate([planes * weight[:, :, None], weight[:, :, None]], axis=2)
    blurred = _fft_blur(stacked, float(sigma))
    norm = np.maximum(blurred[:, :, -1:], np.float32(1e-8))
    out = blurred[:, :, :-1] / norm * weight[:, :, None]
    result = np.asarray(out if array.ndim == 3 else out[:, :, 0], dtype=np.float32)
    return result


def _finish(image: FloatImage, fov: BoolMask) -> FloatImage:
    return np.asarray(np.clip(image, 0.0, 1.0) * fov[:, :, None], dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Blur
# --------------------------------------------------------------------------------------------------


def _sample_blur(rng: np.random.Generator, severity: str, fov: BoolMask) -> Params:
    sigma_512 = _uniform(rng, _BLUR_SIGMA_512[severity])
    return {"severity": severity, "sigma_512": sigma_512, "sigma_px": sigma_512 * fov.shape[1] / 512.0}


def _apply_blur(image: FloatImage, params: Mapping[str, Any], fov: BoolMask) -> FloatImage:
    return _finish(gaussian_blur(image, float(params["sigma_px"]), mask=fov), fov)


def degrade_blur(
    image: NDArray[Any], rng: np.random.Generator, *, severity: Severity = "any", fov: NDArray[Any] | None = None
) -> tuple[FloatImage, Params]:
    """Gaussian blur with σ 5–15 px at 512 px (mild 5–9, strong 9–15), scaled with the image width.

    Args:
        image: ``(H, W, 3)`` float image in ``[0, 1]`` or ``uint8``.
        rng: Source of randomness.
        severity: ``"mild"``, ``"strong"`` or ``"any"`` (one of the two, drawn from ``rng``).
        fov: ``(H, W)`` boolean field of view; estimated with :func:`fov_mask` when ``None``.

    Returns:
        ``(degraded float32 image, params)`` with params ``severity``, ``sigma_512`` and ``sigma_px``.

    Examples:
        >>> import numpy as np
        >>> img = np.full((64, 64, 3), 0.5, np.float32)
        >>> out, params = degrade_blur(img, np.random.default_rng(0), severity="mild")
        >>> params["severity"], 5 <= params["sigma_512"] <= 9
        ('mild', True)

    Reference:
        Shen et al., TMI 2021, Sec. III (blur).
    """
    return _degrade_one("blur", image, rng, severity, fov)


# --------------------------------------------------------------------------------------------------
# Spot artefacts
# --------------------------------------------------------------------------------------------------


def _sample_spots(rng: np.random.Generator, severity: str, fov: BoolMask) -> Params:
    cx, cy, radius = _geometry(fov)
    height = fov.shape[0]
    low, high = _SPOT_COUNT[severity]
    count = int(rng.integers(low, high + 1))
    spots = []
    for _ in range(count):
        angle = rng.uniform(0.0, 2.0 * math.pi)
        where = radius * 0.85 * math.sqrt(rng.uniform(0.0, 1.0))
        spot_radius = _uniform(rng, _SPOT_RADIUS[severity]) * height
        color = [float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.8, 1.0)), float(rng.uniform(0.65, 1.0))]
        spots.append(
            {
                "x": cx + where * math.cos(angle),
                "y": cy + where * math.sin(angle),
                "radius": spot_radius,
                "sigma": spot_radius * float(rng.uniform(0.4, 0.8)),
                "beta": _uniform(rng, _SPOT_BETA[severity]),
                "color": color,
            }
        )
    return {"severity": severity, "count": count, "spots": spots}


def _apply_spots(image: FloatImage, params: Mapping[str, Any], fov: BoolMask) -> FloatImage:
    out = image.copy()
    for spot in params["spots"]:
        disc = _soft_disc(fov.shape, spot["x"], spot["y"], spot["radius"], spot["sigma"])
        opacity = (1.0 - np.exp(-float(spot["beta"]) * disc))[:, :, None]
        color = np.asarray(spot["color"], dtype=np.float32)
        out = out * (1.0 - opacity) + opacity * color
    return _finish(np.asarray(out, dtype=np.float32), fov)


def degrade_spots(
    image: NDArray[Any], rng: np.random.Generator, *, severity: Severity = "any", fov: NDArray[Any] | None = None
) -> tuple[FloatImage, Params]:
    """Bright blurred spot artefacts: 5–10 discs of radius 0.01–0.05·H, opacity ``1 − exp(−β·m)``.

    Mild: 5–7 spots, radius 0.01–0.03·H, β 0.8–1.6; strong: 8–10 spots, radius 0.025–0.05·H, β 1.6–3.

    Args:
        image: ``(H, W, 3)`` float image in ``[0, 1]`` or ``uint8``.
        rng: Source of randomness.
        severity: ``"mild"``, ``"strong"`` or ``"any"``.
        fov: ``(H, W)`` boolean field of view; estimated with :func:`fov_mask` when ``None``.

    Returns:
        ``(degraded float32 image, params)``; params list every spot's centre, radius, blur σ, β and colour.

    Examples:
        >>> import numpy as np
        >>> img = np.full((64, 64, 3), 0.3, np.float32)
        >>> out, params = degrade_spots(img, np.random.default_rng(0), severity="strong")
        >>> 8 <= params["count"] <= 10, bool(out.max() > 0.3)
        (True, True)

    Reference:
        Shen et al., TMI 2021, Sec. III (spot artefacts).
    """
    return _degrade_one("spot", image, rng, severity, fov)


# --------------------------------------------------------------------------------------------------
# Illumination: colour jitter, halo, hole
# --------------------------------------------------------------------------------------------------


def _two_sided(rng: np.random.Generator, low: tuple[float, float], high: tuple[float, float]) -> float:
    return _uniform(rng, low if rng.uniform() < 0.5 else high)


def _sample_illumination(rng: np.random.Generator, severity: str, fov: BoolMask) -> Params:
    cx, cy, radius = _geometry(fov)
    width = fov.shape[1]
    if severity == "mild":
        brightness = _uniform(rng, (0.85, 1.1))
        contrast = _uniform(rng, (0.8, 1.2))
        saturation = _uniform(rng, (0.8, 1.2))
    else:
        brightness = _two_sided(rng, (0.7, 0.85), (1.1, 1.2))
        contrast = _uniform(rng, (0.6, 0.8))
        saturation = _two_sided(rng, (0.6, 0.8), (1.2, 1.4))
    outer = radius * float(rng.uniform(0.9, 1.05))
    halo = {
        "x": cx + radius * float(rng.uniform(-0.05, 0.05)),
        "y": cy + radius * float(rng.uniform(-0.05, 0.05)),
        "r_outer": outer,
        "r_inner": outer - radius * float(rng.uniform(0.15, 0.3)),
        "sigma": radius * float(rng.uniform(0.05, 0.1)),
        "alpha": _uniform(rng, _HALO_ALPHA[severity]),
        "tint": [float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.7, 1.0)), float(rng.uniform(0.4, 0.9))],
    }
    diameter = float(rng.uniform(0.4, 0.7)) * width
    angle = rng.uniform(0.0, 2.0 * math.pi)
    where = radius * 0.5 * math.sqrt(rng.uniform(0.0, 1.0))
    hole = {
        "x": cx + where * math.cos(angle),
        "y": cy + where * math.sin(angle),
        "diameter": diameter,
        "sigma": diameter * float(rng.uniform(0.1, 0.2)),
        "depth": _uniform(rng, _HOLE_DEPTH[severity]),
    }
    jitter = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
    return {"severity": severity, "jitter": jitter, "halo": halo, "hole": hole}


def _gray(image: FloatImage) -> FloatImage:
    weights = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    return np.asarray(image @ weights, dtype=np.float32)


def _color_jitter(image: FloatImage, jitter: Mapping[str, float], fov: BoolMask) -> FloatImage:
    """torchvision-style brightness, contrast (towards the FOV's mean grey) and saturation."""
    out = np.clip(image * np.float32(jitter["brightness"]), 0.0, 1.0)
    mean = np.float32(_gray(out)[fov].mean())
    contrast = np.float32(jitter["contrast"])
    out = np.clip(contrast * out + (1.0 - contrast) * mean, 0.0, 1.0)
    saturation = np.float32(jitter["saturation"])
    out = np.clip(saturation * out + (1.0 - saturation) * _gray(out)[:, :, None], 0.0, 1.0)
    return np.asarray(out, dtype=np.float32)


def _apply_illumination(image: FloatImage, params: Mapping[str, Any], fov: BoolMask) -> FloatImage:
    out = _color_jitter(image, params["jitter"], fov)
    halo = params["halo"]
    ring = _soft_disc(fov.shape, halo["x"], halo["y"], halo["r_outer"], halo["sigma"]) - _soft_disc(
        fov.shape, halo["x"], halo["y"], halo["r_inner"], halo["sigma"]
    )
    weight = (np.float32(halo["alpha"]) * np.clip(ring, 0.0, 1.0))[:, :, None]
    out = out * (1.0 - weight) + weight * np.asarray(halo["tint"], dtype=np.float32)
    hole = params["hole"]
    dark = _soft_disc(fov.shape, hole["x"], hole["y"], hole["diameter"] / 2.0, hole["sigma"])
    gate = np.clip((out.mean(axis=2) - (_HOLE_GATE - 0.05)) / 0.1, 0.0, 1.0)
    out = out - (np.float32(hole["depth"]) * dark * gate)[:, :, None]
    return _finish(np.asarray(out, dtype=np.float32), fov)


def degrade_illumination(
    image: NDArray[Any], rng: np.random.Generator, *, severity: Severity = "any", fov: NDArray[Any] | None = None
) -> tuple[FloatImage, Params]:
    """Uneven illumination and low contrast: colour jitter, a tinted halo ring and a dark hole.

    Mild: brightness 0.85–1.1, contrast and saturation 0.8–1.2, halo opacity 0.1–0.25, hole depth
    0.12–0.2. Strong: brightness 0.7–0.85 or 1.1–1.2, contrast 0.6–0.8, saturation 0.6–0.8 or
    1.2–1.4, halo opacity 0.25–0.5, hole depth 0.26–0.28. The hole (diameter 0.4–0.7·W, blurred)
    darkens only where the mean colour is above 0.25, which pulls a bright background towards the
    colour of dark lesions.

    Args:
        image: ``(H, W, 3)`` float image in ``[0, 1]`` or ``uint8``.
        rng: Source of randomness.
        severity: ``"mild"``, ``"strong"`` or ``"any"``.
        fov: ``(H, W)`` boolean field of view; estimated with :func:`fov_mask` when ``None``.

    Returns:
        ``(degraded float32 image, params)`` with ``jitter``, ``halo`` and ``hole`` parameters.

    Examples:
        >>> import numpy as np
        >>> img = np.full((64, 64, 3), 0.5, np.float32)
        >>> out, params = degrade_illumination(img, np.random.default_rng(0), severity="strong")
        >>> sorted(params), 0.4 * 64 <= params["hole"]["diameter"] <= 0.7 * 64
        (['halo', 'hole', 'jitter', 'severity'], True)

    Reference:
        Shen et al., TMI 2021, Sec. III (illumination: colour jitter, halo and hole).
    """
    return _degrade_one("illumination", image, rng, severity, fov)


# --------------------------------------------------------------------------------------------------
# The factor table: every dispatch over factors goes through it
# --------------------------------------------------------------------------------------------------


class _Factor(NamedTuple):
    """How one factor draws its parameters and applies them (no randomness in ``apply``)."""

    sample: Callable[[np.random.Generator, str, BoolMask], Params]
    apply: Callable[[FloatImage, Mapping[str, Any], BoolMask], FloatImage]


#: Sampler and applier of each factor, keyed in :data:`FACTORS`' order.
_FACTOR_FUNCTIONS: dict[str, _Factor] = {
    "blur": _Factor(_sample_blur, _apply_blur),
    "illumination": _Factor(_sample_illumination, _apply_illumination),
    "spot": _Factor(_sample_spots, _apply_spots),
}


def _degrade_one(
    factor: str, image: NDArray[Any], rng: np.random.Generator, severity: Severity, fov: NDArray[Any] | None
) -> tuple[FloatImage, Params]:
    """Check the inputs, draw ``factor``'s severity and parameters from ``rng`` and apply them."""
    array = _as_image(image)
    mask = _check_fov(fov, array)
    _check_generator(rng)
    functions = _FACTOR_FUNCTIONS[factor]
    params = functions.sample(rng, _pick_severity(severity, rng), mask)
    return functions.apply(array, params, mask), params


# --------------------------------------------------------------------------------------------------
# Combinations, quality levels and labels
# --------------------------------------------------------------------------------------------------


def quality_index(level: int | str) -> int:
    """EyeQ quality code (0 Good, 1 Usable, 2 Reject) from a code or a (case-insensitive) name.

    Examples:
        >>> quality_index("Usable"), quality_index(2)
        (1, 2)
    """
    if isinstance(level, str):
        name = level.strip().lower()
        if name not in QUALITY_NAMES:
            raise ValueError(f"level must be one of {QUALITY_NAMES} or 0, 1, 2, got {level!r}")
        return QUALITY_NAMES.index(name)
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, np.integer)) or not 0 <= level <= 2:
        raise ValueError(f"level must be 0 (good), 1 (usable) or 2 (reject), got {level!r}")
    return int(level)


def type_code(factors: Iterable[str]) -> str:
    """Shen et al.'s type code of a set of factors: ``'001'`` illumination, ``'010'`` spot, ``'100'`` blur.

    Examples:
        >>> type_code(["blur", "illumination"]), type_code([])
        ('101', '000')
    """
    value = 0
    for factor in factors:
        if factor not in FACTOR_CODES:
            raise ValueError(f"factors must be among {sorted(FACTOR_CODES)}, got {factor!r}")
        value |= int(FACTOR_CODES[factor], 2)
    return format(value, "03b")


def _plan(level: int, rng: np.random.Generator) -> dict[str, str]:
    """Factors and severities for a quality level (Good: none; Usable: one mild; Reject: see below)."""
    if level == 0:
        return {}
    if level == 1:
        return {FACTORS[int(rng.integers(0, 3))]: "mild"}
    if rng.uniform() < 0.5:  # one strong factor
        return {FACTORS[int(rng.integers(0, 3))]: "strong"}
    count = 2 if rng.uniform() < 2.0 / 3.0 else 3
    chosen = sorted(int(i) for i in rng.choice(3, size=count, replace=False))
    return {FACTORS[i]: SEVERITIES[int(rng.integers(0, 2))] for i in chosen}


def sample_degradation(level: int | str, rng: np.random.Generator, fov: NDArray[Any]) -> Params:
    """Draw the parameters of a degradation that gives EyeQ quality ``level``.

    Good: no factor. Usable: one factor (uniform over the three), mild. Reject: with probability
    1/2 one strong factor, otherwise two (p = 2/3) or three factors, each mild or strong.

    Args:
        level: 0/``"good"``, 1/``"usable"`` or 2/``"reject"``.
        rng: Source of randomness.
        fov: ``(H, W)`` boolean field of view the degradation will act in.

    Returns:
        ``{"level", "code", "order", "factors": {factor: params}}`` ready for :func:`apply_degradation`
        and JSON.

    Examples:
        >>> import numpy as np
        >>> fov = np.ones((32, 32), bool)
        >>> params = sample_degradation("usable", np.random.default_rng(0), fov)
        >>> params["level"], len(params["factors"]), quality_from_params(params)
        (1, 1, 1)

    Reference:
        Shen et al., TMI 2021 (type codes); Fu et al., MICCAI 2019 (EyeQ levels).
    """
    code = quality_index(level)
    _check_generator(rng)
    if not isinstance(fov, np.ndarray) or fov.ndim != 2 or not fov.any():
        raise ValueError(f"fov must be a non-empty (H, W) boolean array, got {getattr(fov, 'shape', fov)!r}")
    mask = np.asarray(fov, dtype=bool)
    factors: dict[str, Params] = {}
    for factor, severity in _plan(code, rng).items():
        factors[factor] = _FACTOR_FUNCTIONS[factor].sample(rng, severity, mask)
    params: Params = {"level": code, "code": type_code(factors), "order": list(FACTORS), "factors": factors}
    return params


def _check_params(params: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    factors = params.get("factors") if isinstance(params, Mapping) else None
    if not isinstance(factors, Mapping):
        raise ValueError("params must be a mapping with a 'factors' mapping (from sample_degradation)")
    for name, values in factors.items():
        if name not in FACTORS:
            raise ValueError(f"params['factors'] has unknown factor {name!r}; expected among {FACTORS}")
        if not isinstance(values, Mapping) or values.get("severity") not in SEVERITIES:
            raise ValueError(f"params['factors'][{name!r}] needs a 'severity' of {SEVERITIES}")
    return factors


def apply_degradation(image: NDArray[Any], params: Mapping[str, Any], fov: NDArray[Any] | None = None) -> FloatImage:
    """Apply recorded degradation ``params`` (blur, then illumination, then spots); no randomness.

    Args:
        image: ``(H, W, 3)`` float image in ``[0, 1]`` or ``uint8``.
        params: From :func:`sample_degradation` (or the ``params`` of :func:`degrade_image`).
        fov: ``(H, W)`` boolean field of view; estimated with :func:`fov_mask` when ``None``.

    Returns:
        The degraded float32 image, black outside the FOV.

    Examples:
        >>> import numpy as np
        >>> img = np.full((32, 32, 3), 0.5, np.float32)
        >>> params = sample_degradation(2, np.random.default_rng(1), np.ones((32, 32), bool))
        >>> apply_degradation(img, params).shape
        (32, 32, 3)
    """
    array = _as_image(image)
    mask = _check_fov(fov, array)
    factors = _check_params(params)
    out = array * mask[:, :, None]
    for factor in FACTORS:
        if factor in factors:
            out = _FACTOR_FUNCTIONS[factor].apply(out, factors[factor], mask)
    return np.asarray(out, dtype=np.float32)


def degrade_image(
    image: NDArray[Any], level: int | str, rng: np.random.Generator, *, fov: NDArray[Any] | None = None
) -> tuple[FloatImage, Params]:
    """Degrade ``image`` to EyeQ quality ``level`` (draw with :func:`sample_degradation`, then apply).

    Args:
        image: ``(H, W, 3)`` float image in ``[0, 1]`` or ``uint8``.
        level: 0/``"good"`` (returned unchanged inside the FOV), 1/``"usable"`` or 2/``"reject"``.
        rng: Source of randomness.
        fov: ``(H, W)`` boolean field of view; estimated with :func:`fov_mask` when ``None``.

    Returns:
        ``(degraded float32 image, params)``.

    Examples:
        >>> import numpy as np
        >>> img = np.full((64, 64, 3), 0.5, np.float32)
        >>> out, params = degrade_image(img, "reject", np.random.default_rng(0))
        >>> quality_from_params(params), out.dtype
        (2, dtype('float32'))

    Reference:
        Shen et al., "Modeling and Enhancing Low-Quality Retinal Fundus Images", TMI 2021.
    """
    array = _as_image(image)
    mask = _check_fov(fov, array)
    params = sample_degradation(level, rng, mask)
    return apply_degradation(array, params, mask), params


def quality_from_params(params: Mapping[str, Any]) -> int:
    """EyeQ quality code implied by degradation parameters: 0 none, 1 one mild factor, 2 otherwise.

    Examples:
        >>> quality_from_params({"factors": {"blur": {"severity": "mild"}}})
        1
    """
    factors = _check_params(params)
    if not factors:
        return 0
    if len(factors) == 1 and next(iter(factors.values()))["severity"] == "mild":
        return 1
    return 2


def factor_labels(params: Mapping[str, Any]) -> dict[str, int]:
    """Per-factor binary labels (FIVES-like: blur, illumination/contrast, spot artefacts), in :data:`FACTORS`' order.

    Examples:
        >>> factor_labels({"factors": {"spot": {"severity": "strong"}}})
        {'blur': 0, 'illumination': 0, 'spot': 1}
    """
    factors = _check_params(params)
    return {name: int(name in factors) for name in FACTORS}


# --------------------------------------------------------------------------------------------------
# Torch helper
# --------------------------------------------------------------------------------------------------


def _levels_for(level: int | str | Sequence[int | str] | Tensor, n: int) -> list[int]:
    if isinstance(level, Tensor):
        values: list[Any] = level.flatten().tolist()
    elif isinstance(level, (str, int, np.integer)):
        values = [level] * n
    else:
        values = list(level)
    if len(values) != n:
        raise ValueError(f"level must be one level or one per image ({n}), got {len(values)} levels")
    return [quality_index(v) for v in values]


def degrade_tensor(
    images: Tensor,
    level: int | str | Sequence[int | str] | Tensor,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    fov_threshold: float = 10.0 / 255.0,
) -> Tensor:
    """Degrade a ``(3, H, W)`` image or ``(N, 3, H, W)`` batch to an EyeQ quality level.

    Each image gets its own degradation from :func:`degrade_image`, with the FOV found by
    :func:`fov_mask`. One 62-bit seed is drawn from ``generator`` (or taken from ``seed``; the
    global torch RNG when both are ``None``) and drives a numpy generator for the whole batch, so
    the result is reproducible from the generator's state.

    Args:
        images: Float tensor in ``[0, 1]`` (or ``uint8``), ``(3, H, W)`` or ``(N, 3, H, W)``.
        level: One level for all images, or one per image: 0/``"good"``, 1/``"usable"``, 2/``"reject"``.
        generator: Torch generator to draw the seed from.
        seed: Integer seed instead of ``generator``.
        fov_threshold: Brightness above which a pixel is in the FOV.

    Returns:
        Tensor of ``images``' shape, dtype and device.

    Examples:
        >>> import torch
        >>> batch = torch.full((2, 3, 64, 64), 0.5)
        >>> out = degrade_tensor(batch, "reject", generator=torch.Generator().manual_seed(0))
        >>> out.shape, out.dtype
        (torch.Size([2, 3, 64, 64]), torch.float32)

    Reference:
        Shen et al., TMI 2021; used for CoMCL's 70 % / 100 % low-quality test sets.
    """
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"images must have shape (3, H, W) or (N, 3, H, W), got {tuple(images.shape)}")
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    batch = images.unsqueeze(0) if images.ndim == 3 else images
    levels = _levels_for(level, batch.shape[0])
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    source = batch.detach().to("cpu")
    if source.dtype != torch.uint8:
        source = source.float()
    outputs = []
    for index, code in enumerate(levels):
        array = source[index].permute(1, 2, 0).numpy()
        name = f"images[{index}]"
        image = _as_image(array, name)
        mask = image.max(axis=2) > fov_threshold
        if not mask.any():
            raise ValueError(f"{name} has no field of view: no pixel is brighter than fov_threshold")
        degraded, _ = degrade_image(image, code, rng, fov=mask)
        outputs.append(torch.from_numpy(degraded).permute(2, 0, 1))
    result = torch.stack(outputs)
    if images.dtype == torch.uint8:
        result = (result * 255.0).round().to(torch.uint8)
    else:
        result = result.to(images.dtype)
    result = result.to(images.device)
    return result[0] if images.ndim == 3 else result


def raise_low_quality(
    data: ImageTable,
    ratio: float,
    seed: int,
    *,
    degrade: Callable[[Tensor, Tensor, torch.Generator], Tensor] | None = None,
) -> ImageTable:
    """A copy of ``data`` whose low-quality fraction is raised to ``ratio`` (CoMCL's 70 % / 100 % test sets).

    Images of quality 0 (the best level) are drawn at random and degraded to the worse levels in
    turn (``1, 2, 1, 2, …`` for EyeQ's three levels; ``1`` where a dataset has two) with
    :func:`degrade_tensor` — or with ``degrade(images, levels, generator)``, e.g. simulated low
    dose for X-rays — and their quality codes updated. A ratio at or below the current one
    returns ``data`` unchanged.

    Args:
        data: Test images (``uint8``) with at least two quality levels.
        ratio: Target fraction of images below the best level, in ``[0, 1]``.
        seed: Seed of the choice and of the degradations.
        degrade: ``(images (K, C, S, S) uint8, levels (K,), generator) → degraded uint8 images``.

    Examples:
        >>> import torch
        >>> from qualcl.data import ImageTable
        >>> table = ImageTable(torch.full((4, 3, 32, 32), 120, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
        ...                    torch.tensor([0, 0, 0, 1]), quality_names=("Good", "Usable", "Reject"))
        >>> raise_low_quality(table, 0.75, seed=0).quality.tolist().count(0)
        1
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
    worse = len(data.quality_names) - 1
    if worse < 1:
        raise ValueError(f"raising the low-quality ratio needs two quality levels, got {data.quality_names}")
    n = len(data)
    good = torch.nonzero(data.quality == 0).flatten()
    needed = min(good.numel(), math.ceil(ratio * n - 1e-9) - (n - good.numel()))
    if needed <= 0:
        return data
    generator = torch.Generator().manual_seed(seed)
    chosen = good[torch.randperm(good.numel(), generator=generator)[:needed]]
    levels = torch.tensor([1 + rank % min(worse, 2) for rank in range(needed)])
    images = data.images.clone()
    quality = data.quality.clone()
    if degrade is None:
        images[chosen] = degrade_tensor(images[chosen], levels, generator=generator)
    else:
        images[chosen] = degrade(images[chosen], levels, generator)
    quality[chosen] = levels
    return data.replace_images(images, quality)
