"""Retinal vessel trees: random-walk arcades from the optic disc with tapering width and branching.

Geometry is drawn in normalised image coordinates (``[0, 1]``, pixel centre ``j`` at
``(j + 0.5) / size``) in the canonical *right-eye* frame, where the disc lies right of the fovea
(nasal = +x). A left eye uses the mirror image. Four arcades (superior/inferior temporal, which
wrap around the macula, and superior/inferior nasal) each hold a vein and a thinner artery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from qualcl.data.synthetic.raster import splat_discs, tube_points

__all__ = ["Vessel", "rasterize_vessels", "sample_vessels"]

FloatArray = NDArray[np.float32]

_STEP = 0.012  # random-walk step, in image sides
_MIN_RADIUS = 0.0022  # a vessel ends when thinner than this (in image sides)
_FOV_RADIUS = 0.46
# (initial heading in degrees, curvature in rad/step, length in steps, width scale) per arcade.
_ARCADES = {
    "superior temporal": (-100.0, -0.04, 75, 1.0),
    "inferior temporal": (100.0, 0.04, 75, 1.0),
    "superior nasal": (-55.0, 0.008, 45, 0.8),
    "inferior nasal": (55.0, -0.008, 45, 0.8),
}


@dataclass(frozen=True)
class Vessel:
    """One vessel segment as a polyline in normalised coordinates.

    Attributes:
        kind: ``"artery"`` or ``"vein"``.
        xs: ``(K,)`` node x coordinates (image sides).
        ys: ``(K,)`` node y coordinates.
        radii: ``(K,)`` node radii (image sides), tapering along the vessel.

    Examples:
        >>> import numpy as np
        >>> v = Vessel("vein", np.array([0.7, 0.6], np.float32), np.array([0.5, 0.4], np.float32),
        ...            np.array([0.01, 0.009], np.float32))
        >>> v.kind, v.xs.shape
        ('vein', (2,))
    """

    kind: str
    xs: FloatArray
    ys: FloatArray
    radii: FloatArray


@dataclass
class _Walker:
    x: float
    y: float
    heading: float
    curvature: float
    radius: float
    steps: int
    depth: int
    kind: str


def _walk(rng: np.random.Generator, start: _Walker, fovea: tuple[float, float], pending: list[_Walker]) -> Vessel:
    """Follow one vessel until it leaves the FOV, thins out, enters the fovea or runs out of steps."""
    w = start
    xs, ys, radii = [w.x], [w.y], [w.radius]
    noise = rng.normal(0.0, 0.09, size=w.steps)
    branch_draws = rng.uniform(size=w.steps)
    for step in range(w.steps):
        w.heading += w.curvature + float(noise[step])
        w.x += _STEP * math.cos(w.heading)
        w.y += _STEP * math.sin(w.heading)
        w.radius *= 0.992
        if math.hypot(w.x - 0.5, w.y - 0.5) > _FOV_RADIUS - 0.004 or w.radius < _MIN_RADIUS:
            break
        if math.hypot(w.x - fovea[0], w.y - fovea[1]) < 0.035:
            break
        xs.append(w.x)
        ys.append(w.y)
        radii.append(w.radius)
        if w.depth < 3 and step > 3 and branch_draws[step] < 0.06:
            side = 1.0 if rng.uniform() < 0.5 else -1.0
            remaining = w.steps - step
            pending.append(
                _Walker(
                    x=w.x,
                    y=w.y,
                    heading=w.heading + side * float(rng.uniform(0.35, 0.95)),
                    curvature=float(rng.normal(0.0, 0.015)),
                    radius=w.radius * float(rng.uniform(0.55, 0.75)),
                    steps=max(6, int(remaining * rng.uniform(0.4, 0.8))),
                    depth=w.depth + 1,
                    kind=w.kind,
                )
            )
            w.radius *= 0.93
    as_array = np.asarray
    return Vessel(w.kind, as_array(xs, dtype=np.float32), as_array(ys, dtype=np.float32), as_array(radii, np.float32))


def sample_vessels(
    rng: np.random.Generator, disc: tuple[float, float], fovea: tuple[float, float]
) -> tuple[Vessel, ...]:
    """Draw the vessel tree of one (right) eye.

    Args:
        rng: Source of randomness.
        disc: Optic-disc centre, normalised.
        fovea: Fovea centre, normalised (vessels stop at a small avascular zone around it).

    Returns:
        Every vessel segment (arcade trunks and their recursive branches).

    Examples:
        >>> import numpy as np
        >>> vessels = sample_vessels(np.random.default_rng(0), (0.72, 0.5), (0.4, 0.52))
        >>> len(vessels) >= 8, {v.kind for v in vessels} == {"artery", "vein"}
        (True, True)
    """
    roots = []
    for heading, curvature, steps, scale in _ARCADES.values():
        for kind, offset, width in (("vein", 7.0, 0.0095), ("artery", -7.0, 0.0074)):
            roots.append(
                _Walker(
                    x=disc[0],
                    y=disc[1],
                    heading=math.radians(heading + offset * math.copysign(1.0, heading) + rng.normal(0.0, 6.0)),
                    curvature=curvature * float(rng.uniform(0.8, 1.2)),
                    radius=width * scale * float(rng.uniform(0.9, 1.1)),
                    steps=int(steps * rng.uniform(0.85, 1.15)),
                    depth=0,
                    kind=kind,
                )
            )
    vessels: list[Vessel] = []
    pending: list[_Walker] = []
    for root in roots:
        pending.append(root)
        while pending:
            vessels.append(_walk(rng, pending.pop(), fovea, pending))
    return tuple(vessels)


def rasterize_vessels(vessels: tuple[Vessel, ...], size: int) -> tuple[FloatArray, FloatArray]:
    """Coverage maps ``(arteries, veins)`` of a vessel tree at ``size × size`` pixels.

    Args:
        vessels: From :func:`sample_vessels`.
        size: Image side in pixels.

    Returns:
        Two ``(size, size)`` float32 maps in ``[0, 1]``.

    Examples:
        >>> import numpy as np
        >>> arteries, veins = rasterize_vessels(sample_vessels(np.random.default_rng(0), (0.72, 0.5), (0.4, 0.52)), 64)
        >>> arteries.shape, bool(veins.max() > 0.5)
        ((64, 64), True)
    """
    out = []
    for kind in ("artery", "vein"):
        parts = [tube_points(v.xs * size - 0.5, v.ys * size - 0.5, v.radii * size) for v in vessels if v.kind == kind]
        if parts:
            xs = np.concatenate([p[0] for p in parts])
            ys = np.concatenate([p[1] for p in parts])
            radii = np.concatenate([p[2] for p in parts])
        else:
            xs = ys = radii = np.zeros(0, dtype=np.float32)
        out.append(splat_discs(size, xs, ys, radii))
    return out[0], out[1]
