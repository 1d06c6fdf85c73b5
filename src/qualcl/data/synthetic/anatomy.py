"""Per-patient fundus anatomy: background, vignetting, choroidal texture, macula, vessels, optic disc.

A patient's anatomy is drawn once, in the canonical right-eye frame (disc on the right, the nasal
side of a right eye in a fundus photograph), and rendered for both eyes: the left eye is the exact
mirror image, so the two eyes share background colour, texture and vessel layout. Every parameter
here is drawn independently of grade and quality (``docs/data.md``, "no shortcuts").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qualcl.data.degrade import gaussian_blur
from qualcl.data.synthetic.vessels import Vessel, rasterize_vessels, sample_vessels

__all__ = ["FOV_RADIUS", "Anatomy", "RenderedEye", "mirror_eye", "render_eye", "sample_anatomy"]

#: Radius of the circular field of view, as a fraction of the image side.
FOV_RADIUS = 0.46

FloatArray = NDArray[np.float32]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class Anatomy:
    """Shared parameters of one patient's two eyes, normalised (image side = 1), right-eye frame.

    Attributes:
        color: Background RGB before brightness, vignetting and texture.
        brightness: Global brightness factor.
        vignetting: Relative darkening at the FOV edge.
        texture: Amplitude of the low-frequency choroidal luminance noise.
        tessellation: Amplitude of the finer (choroidal-vessel, "tigroid") texture.
        tint: Amplitude of the low-frequency colour noise.
        texture_seed: Seed of the noise fields.
        disc: Optic-disc centre.
        disc_radius: Optic-disc radius.
        cup_ratio: Cup radius / disc radius.
        disc_color: RGB of the disc rim.
        fovea: Fovea centre.
        macula_sigma: Gaussian width of the darker macula.
        macula_depth: Relative darkening at the fovea.
        vessel_contrast: Scales how dark the vessels are.
        vessels: The vessel tree.

    Examples:
        >>> import numpy as np
        >>> anatomy = sample_anatomy(np.random.default_rng(1))
        >>> 0.72 <= anatomy.brightness <= 1.12, anatomy.summary()["vessel_segments"] == len(anatomy.vessels)
        (True, True)
    """

    color: tuple[float, float, float]
    brightness: float
    vignetting: float
    texture: float
    tessellation: float
    tint: float
    texture_seed: int
    disc: tuple[float, float]
    disc_radius: float
    cup_ratio: float
    disc_color: tuple[float, float, float]
    fovea: tuple[float, float]
    macula_sigma: float
    macula_depth: float
    vessel_contrast: float
    vessels: tuple[Vessel, ...]

    def summary(self) -> dict[str, object]:
        """JSON-ready scalar parameters (the vessel tree is summarised by its segment count)."""
        return {
            "color": list(self.color),
            "brightness": self.brightness,
            "vignetting": self.vignetting,
            "texture": self.texture,
            "tessellation": self.tessellation,
            "tint": self.tint,
            "disc_radius": self.disc_radius,
            "cup_ratio": self.cup_ratio,
            "macula_sigma": self.macula_sigma,
            "macula_depth": self.macula_depth,
            "vessel_contrast": self.vessel_contrast,
            "vessel_segments": len(self.vessels),
        }


@dataclass(frozen=True)
class RenderedEye:
    """An eye's anatomy rendered at ``size`` pixels, before lesions and degradation.

    Attributes:
        image: ``(S, S, 3)`` float32 RGB in ``[0, 1]``, black outside the FOV.
        fov: ``(S, S)`` bool field of view.
        vessels: ``(S, S)`` bool vessel mask (visible vessels: coverage ≥ 0.5, not under the disc).
        disc_mask: ``(S, S)`` bool optic-disc mask.
        disc: Disc centre ``(x, y)`` in pixels.
        disc_radius: Disc radius in pixels.
        fovea: Fovea centre ``(x, y)`` in pixels.

    Examples:
        >>> import numpy as np
        >>> eye = render_eye(sample_anatomy(np.random.default_rng(0)), 64, "right")
        >>> eye.image.shape, eye.disc[0] > 32, bool(eye.disc_mask.any())
        ((64, 64, 3), True, True)
    """

    image: FloatArray
    fov: BoolArray
    vessels: BoolArray
    disc_mask: BoolArray
    disc: tuple[float, float]
    disc_radius: float
    fovea: tuple[float, float]


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy.

    Examples:
        >>> import numpy as np
        >>> anatomy = sample_anatomy(np.random.default_rng(0))
        >>> anatomy.disc[0] > 0.5 > anatomy.fovea[0]
        True
    """
    red = float(rng.uniform(0.78, 0.95))
    color = (red, red * float(rng.uniform(0.38, 0.55)), red * float(rng.uniform(0.15, 0.3)))
    disc = (0.5 + float(rng.uniform(0.19, 0.25)), 0.5 + float(rng.uniform(-0.04, 0.04)))
    fovea = (disc[0] - float(rng.uniform(0.3, 0.36)), disc[1] + float(rng.uniform(0.0, 0.04)))
    disc_color = (1.0, float(rng.uniform(0.82, 0.9)), float(rng.uniform(0.55, 0.7)))
    return Anatomy(
        color=color,
        brightness=float(rng.uniform(0.72, 1.12)),
        vignetting=float(rng.uniform(0.05, 0.7)),
        texture=float(rng.uniform(0.02, 0.16)),
        tessellation=float(rng.uniform(0.0, 0.16)),
        tint=float(rng.uniform(0.01, 0.1)),
        texture_seed=int(rng.integers(0, 2**62)),
        disc=disc,
        disc_radius=float(rng.uniform(0.06, 0.075)),
        cup_ratio=float(rng.uniform(0.3, 0.5)),
        disc_color=disc_color,
        fovea=fovea,
        macula_sigma=float(rng.uniform(0.05, 0.08)),
        macula_depth=float(rng.uniform(0.15, 0.4)),
        vessel_contrast=float(rng.uniform(0.65, 1.15)),
        vessels=sample_vessels(rng, disc, fovea),
    )


def _noise(rng: np.random.Generator, size: int, sigma: float) -> FloatArray:
    """Gaussian-blurred white noise with unit standard deviation."""
    field = gaussian_blur(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return np.asarray(field / max(float(field.std()), 1e-6), dtype=np.float32)


def _soft_disc(dist: FloatArray, radius: float, edge: float) -> FloatArray:
    return np.asarray(np.clip((radius - dist) / edge + 0.5, 0.0, 1.0), dtype=np.float32)


def render_eye(anatomy: Anatomy, size: int, eye: str) -> RenderedEye:
    """Render a patient's anatomy for one eye (the left eye mirrors the right).

    Layers: background × vignetting × choroidal noise, darker macula, vessels, then the optic disc
    (drawn after the vessels).

    Args:
        anatomy: From :func:`sample_anatomy`.
        size: Image side in pixels.
        eye: ``"left"`` or ``"right"``.

    Returns:
        The rendered eye with its masks and landmarks in pixels.

    Examples:
        >>> import numpy as np
        >>> anatomy = sample_anatomy(np.random.default_rng(0))
        >>> left, right = render_eye(anatomy, 64, "left"), render_eye(anatomy, 64, "right")
        >>> bool(np.array_equal(left.image, right.image[:, ::-1]))
        True
    """
    if eye not in ("left", "right"):
        raise ValueError(f"eye must be 'left' or 'right', got {eye!r}")
    s = float(size)
    coords = np.arange(size, dtype=np.float32)
    xs, ys = coords[None, :], coords[:, None]
    centre = (size - 1) / 2.0
    radius = FOV_RADIUS * s
    fov = (xs - centre) ** 2 + (ys - centre) ** 2 <= radius**2
    rr = np.sqrt((xs - centre) ** 2 + (ys - centre) ** 2) / np.float32(radius)

    noise_rng = np.random.default_rng(anatomy.texture_seed)
    luminance = _noise(noise_rng, size, s / 24.0)
    hue = _noise(noise_rng, size, s / 14.0)
    fine = _noise(noise_rng, size, s / 32.0)
    shade = anatomy.brightness * (1.0 - anatomy.vignetting * np.clip(rr, 0.0, 1.0) ** 2.2)
    shade = shade * (1.0 + anatomy.texture * luminance + anatomy.tessellation * fine)
    image = np.asarray(anatomy.color, dtype=np.float32)[None, None, :] * shade[:, :, None]
    image[:, :, 1] *= 1.0 + anatomy.tint * hue
    image[:, :, 2] *= 1.0 + 0.5 * anatomy.tint * hue

    fx, fy = anatomy.fovea[0] * s - 0.5, anatomy.fovea[1] * s - 0.5
    macula = np.exp(-((xs - fx) ** 2 + (ys - fy) ** 2) / (2.0 * (anatomy.macula_sigma * s) ** 2))
    image *= 1.0 - anatomy.macula_depth * macula[:, :, None] * np.asarray([1.0, 1.1, 1.1], dtype=np.float32)

    arteries, veins = rasterize_vessels(anatomy.vessels, size)
    k = anatomy.vessel_contrast
    for coverage, darkest in ((veins, (0.55, 0.33, 0.45)), (arteries, (0.72, 0.5, 0.58))):
        loss = 1.0 - np.asarray(darkest, dtype=np.float32)
        image *= 1.0 - np.clip(k * coverage, 0.0, 1.0)[:, :, None] * loss

    dx, dy = anatomy.disc[0] * s - 0.5, anatomy.disc[1] * s - 0.5
    disc_r = anatomy.disc_radius * s
    dist = np.sqrt((xs - dx) ** 2 + (ys - dy) ** 2)
    rim = 0.9 * _soft_disc(dist, disc_r, max(1.0, 0.15 * disc_r))
    rim_color = np.clip(np.asarray(anatomy.disc_color, dtype=np.float32) * (0.35 + 0.65 * anatomy.brightness), 0, 1)
    image = image * (1.0 - rim[:, :, None]) + rim[:, :, None] * rim_color
    cup = 0.6 * _soft_disc(dist, anatomy.cup_ratio * disc_r, max(1.0, 0.3 * disc_r))
    cup_color = np.clip(np.asarray([1.0, 0.96, 0.85], dtype=np.float32) * (0.45 + 0.55 * anatomy.brightness), 0, 1)
    image = image * (1.0 - cup[:, :, None]) + cup[:, :, None] * cup_color

    disc_mask = dist <= disc_r
    vessel_mask = (np.maximum(arteries, veins) >= 0.5) & ~disc_mask & fov
    right = RenderedEye(
        image=np.asarray(np.clip(image, 0.0, 1.0) * fov[:, :, None], dtype=np.float32),
        fov=np.asarray(fov, dtype=bool),
        vessels=np.asarray(vessel_mask, dtype=bool),
        disc_mask=np.asarray(disc_mask, dtype=bool),
        disc=(float(dx), float(dy)),
        disc_radius=float(disc_r),
        fovea=(float(fx), float(fy)),
    )
    return right if eye == "right" else mirror_eye(right)


def mirror_eye(eye: RenderedEye) -> RenderedEye:
    """The left-right mirror image of a rendered eye (the fellow eye of the same patient).

    Examples:
        >>> import numpy as np
        >>> right = render_eye(sample_anatomy(np.random.default_rng(0)), 64, "right")
        >>> bool(np.array_equal(mirror_eye(mirror_eye(right)).image, right.image))
        True
    """
    size = eye.image.shape[1]

    def flip(array: NDArray[Any]) -> NDArray[Any]:
        return np.ascontiguousarray(array[:, ::-1])

    return RenderedEye(
        image=flip(eye.image),
        fov=flip(eye.fov),
        vessels=flip(eye.vessels),
        disc_mask=flip(eye.disc_mask),
        disc=(size - 1 - eye.disc[0], eye.disc[1]),
        disc_radius=eye.disc_radius,
        fovea=(size - 1 - eye.fovea[0], eye.fovea[1]),
    )
