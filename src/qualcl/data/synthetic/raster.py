"""Vectorised drawing primitives for the synthetic fundus: anti-aliased discs, ellipses and tubes.

Pixel ``(row i, column j)`` has its centre at ``(x, y) = (j, i)``. Coverage (``alpha``) of a shape
is ``clip(0.5 − signed distance to its edge, 0, 1)``, so a pixel belongs to the shape's *mask*
exactly when ``alpha ≥ 0.5`` (its centre is inside). A shape of radius ≥ 1 px always covers at
least the pixel nearest to its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Window", "ellipse_alpha", "mask_box", "splat_discs", "tube_points"]

FloatArray = NDArray[np.float32]


@dataclass(frozen=True)
class Window:
    """A clipped rectangle of an image: rows ``y0:y1``, columns ``x0:x1``.

    Examples:
        >>> Window.around(1.2, 5.0, 2.0, size=8)
        Window(y0=3, y1=8, x0=0, x1=5)
    """

    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def around(cls, x: float, y: float, reach: float, size: int) -> Window:
        """The pixels within ``reach`` of ``(x, y)`` (clipped to a ``size × size`` image)."""
        return cls(
            max(0, math.floor(y - reach)),
            min(size, math.ceil(y + reach) + 1),
            max(0, math.floor(x - reach)),
            min(size, math.ceil(x + reach) + 1),
        )

    def slices(self) -> tuple[slice, slice]:
        """``(rows, columns)`` slices for indexing an image."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def ellipse_alpha(window: Window, x: float, y: float, semi_major: float, semi_minor: float, angle: float) -> FloatArray:
    """Coverage of an ellipse (centre ``(x, y)``, semi-axes, rotation in radians) inside ``window``.

    The edge distance is approximated by ``(ρ − 1)·semi_minor`` with ``ρ`` the normalised elliptic
    radius, which is exact for a circle and keeps ``mask ⇔ ρ ≤ 1``.
    """
    ys = np.arange(window.y0, window.y1, dtype=np.float32)[:, None] - np.float32(y)
    xs = np.arange(window.x0, window.x1, dtype=np.float32)[None, :] - np.float32(x)
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u = (xs * cos + ys * sin) / np.float32(semi_major)
    v = (-xs * sin + ys * cos) / np.float32(semi_minor)
    rho = np.sqrt(u * u + v * v)
    return np.asarray(np.clip(0.5 - (rho - 1.0) * np.float32(semi_minor), 0.0, 1.0), dtype=np.float32)


def splat_discs(size: int, xs: FloatArray, ys: FloatArray, radii: FloatArray) -> FloatArray:
    """Coverage map of the union of many small discs (``max`` over discs), fully vectorised.

    A disc of radius ``r < 0.5`` covers at most ``2r`` of a pixel, so sub-pixel tubes are faint.

    Args:
        size: Side of the square image.
        xs: ``(K,)`` disc centres, x.
        ys: ``(K,)`` disc centres, y.
        radii: ``(K,)`` radii in pixels.

    Returns:
        ``(size, size)`` float32 coverage in ``[0, 1]``.

    Examples:
        >>> import numpy as np
        >>> one = np.array([3.0], np.float32)
        >>> cover = splat_discs(8, one, one, np.array([1.0], np.float32))
        >>> int((cover >= 0.5).sum())
        5
    """
    coverage = np.zeros(size * size, dtype=np.float32)
    if xs.size == 0:
        return coverage.reshape(size, size)
    reach = math.ceil(float(radii.max()) + 1.0)
    offsets = np.arange(-reach, reach + 1, dtype=np.int64)
    dy, dx = (grid.ravel() for grid in np.meshgrid(offsets, offsets, indexing="ij"))
    px = np.rint(xs).astype(np.int64)[:, None] + dx[None, :]
    py = np.rint(ys).astype(np.int64)[:, None] + dy[None, :]
    distance = np.sqrt((px - xs[:, None]) ** 2 + (py - ys[:, None]) ** 2)
    # A disc thinner than a pixel covers at most its width (2r) of one: thin vessels stay faint.
    cap = np.minimum(1.0, 2.0 * radii)[:, None]
    alpha = np.clip(radii[:, None] + 0.5 - distance, 0.0, cap).astype(np.float32)
    keep = (alpha > 0) & (px >= 0) & (px < size) & (py >= 0) & (py < size)
    np.maximum.at(coverage, (py[keep] * size + px[keep]), alpha[keep])
    return coverage.reshape(size, size)


def tube_points(
    xs: FloatArray, ys: FloatArray, radii: FloatArray, spacing: float = 0.4
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Densify a polyline (nodes with radii) into disc centres at most ``spacing`` px apart.

    Returns ``(xs, ys, radii)`` of the discs whose union is the tapering tube along the polyline.

    Examples:
        >>> import numpy as np
        >>> xs, ys, radii = tube_points(np.array([0, 2], np.float32), np.array([0, 0], np.float32),
        ...                             np.array([1, 0.5], np.float32), spacing=0.5)
        >>> xs.tolist(), radii.tolist()
        ([0.0, 0.5, 1.0, 1.5, 2.0], [1.0, 0.875, 0.75, 0.625, 0.5])
    """
    if xs.size < 2:
        return xs, ys, radii
    seg_x, seg_y = np.diff(xs), np.diff(ys)
    steps = np.maximum(1, np.ceil(np.hypot(seg_x, seg_y) / spacing).astype(np.int64))
    start = np.repeat(np.arange(xs.size - 1), steps)
    within = np.arange(int(steps.sum())) - np.repeat(np.cumsum(steps) - steps, steps)
    t = (within / np.repeat(steps, steps)).astype(np.float32)
    out_x = np.concatenate([xs[start] + t * seg_x[start], xs[-1:]]).astype(np.float32)
    out_y = np.concatenate([ys[start] + t * seg_y[start], ys[-1:]]).astype(np.float32)
    out_r = np.concatenate([radii[start] + t * np.diff(radii)[start], radii[-1:]]).astype(np.float32)
    return out_x, out_y, out_r


def mask_box(mask: NDArray[np.bool_], window: Window | None = None) -> tuple[int, int, int, int]:
    """Bounding box ``(x1, y1, x2, y2)`` (inclusive-exclusive pixels) of a non-empty mask.

    ``mask`` may be a crop; ``window`` then gives its position in the image.

    Examples:
        >>> import numpy as np
        >>> m = np.zeros((4, 4), bool); m[1, 2] = m[2, 3] = True
        >>> mask_box(m), mask_box(m, Window(10, 14, 20, 24))
        ((2, 1, 4, 3), (22, 11, 24, 13))
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty: a lesion must cover at least one pixel")
    oy, ox = (window.y0, window.x0) if window is not None else (0, 0)
    return ox + int(cols[0]), oy + int(rows[0]), ox + int(cols[-1]) + 1, oy + int(rows[-1]) + 1
