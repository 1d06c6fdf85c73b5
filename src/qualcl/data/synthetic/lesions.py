"""DR lesions for a synthetic fundus: how many of each type a grade gets, where they go, how they look.

Types (``docs/data.md``), with ``u = size / 128``:

- ``MA`` microaneurysms: dark-red dots of radius ``u``·(0.85–1.25), at least 1 px;
- ``HE`` haemorrhages: dark-red elliptic blots, semi-major axis ``u``·(1.5–3.5) (≥ 1.25 px);
- ``EX`` hard exudates: yellow bright dots of radius ``u``·(0.9–1.7), at least 1 px;
- ``NV`` neovascularisation: tufts of fine tortuous vessels just outside the optic disc.

Lesions never overlap each other, the optic disc or the FOV edge, so every lesion is visible in
its own mask (coverage ≥ 0.5) and has a box. Counts per quadrant are taken at lesion centres.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from qualcl.data.synthetic.grading import LESION_TYPES, QUADRANTS
from qualcl.data.synthetic.raster import Window, ellipse_alpha, mask_box, splat_discs, tube_points

__all__ = [
    "Lesion",
    "LesionPlan",
    "LesionShape",
    "count_lesions",
    "draw_lesions",
    "place_lesions",
    "plan_lesions",
    "quadrant_of",
    "totals",
]

FloatArray = NDArray[np.float32]
BoolArray = NDArray[np.bool_]

# Multiplicative colour of the darkest point of dark lesions; the yellow of exudates.
_DARK = {"MA": (0.48, 0.32, 0.4), "HE": (0.42, 0.26, 0.34), "NV": (0.5, 0.3, 0.4)}
_YELLOW = (0.98, 0.86, 0.4)


@dataclass(frozen=True)
class LesionPlan:
    """How many lesions of each type an eye gets.

    Attributes:
        ma: Number of microaneurysms.
        he_per_quadrant: Haemorrhages to place in each quadrant (``QUADRANTS`` order), or ``None``.
        he: Haemorrhages to place anywhere.
        ex: Number of hard exudates.
        nv: Number of neovascular tufts.
    """

    ma: int = 0
    he_per_quadrant: tuple[int, int, int, int] | None = None
    he: int = 0
    ex: int = 0
    nv: int = 0


@dataclass(frozen=True)
class Lesion:
    """One drawn lesion.

    Attributes:
        kind: ``"MA"``, ``"HE"``, ``"EX"`` or ``"NV"``.
        x: Centre x in pixels.
        y: Centre y in pixels.
        radius: Extent in pixels (radius; semi-major axis of a haemorrhage; tuft reach of NV).
        quadrant: Index into ``QUADRANTS`` of the centre.
        box: ``(x1, y1, x2, y2)`` of the lesion's mask, inclusive-exclusive pixels.
    """

    kind: str
    x: float
    y: float
    radius: float
    quadrant: int
    box: tuple[int, int, int, int]


@dataclass
class LesionShape:
    """A placed lesion before drawing.

    Attributes:
        kind: Lesion type.
        x: Centre x in pixels.
        y: Centre y in pixels.
        reach: Radius of the disc the lesion fits in (pixels).
        params: Shape parameters: semi-axes ``a``, ``b``, ``angle``, and ``strength`` (opacity).
        points: For NV tufts, disc offsets ``(dx, dy, radius)`` of the strands around the centre.
    """

    kind: str
    x: float
    y: float
    reach: float
    params: dict[str, float] = field(default_factory=dict)
    points: tuple[FloatArray, FloatArray, FloatArray] | None = None


def plan_lesions(grade: int, rng: np.random.Generator) -> LesionPlan:
    """Lesion numbers for a grade, so that :func:`~qualcl.data.synthetic.grading.grade_from_lesions` gives it.

    0: none. 1: 2–5 MA. 2: 2–8 MA plus 1–5 HE and/or 1–6 EX. 3: 3–10 MA, 3–5 HE in every quadrant,
    0–6 EX. 4: the lesions of grade 1, 2 or 3 plus 1–3 NV tufts.

    Examples:
        >>> import numpy as np
        >>> plan_lesions(1, np.random.default_rng(0)).he
        0
    """
    if grade not in range(5):
        raise ValueError(f"grade must be in 0..4, got {grade!r}")
    if grade == 0:
        return LesionPlan()
    if grade == 1:
        return LesionPlan(ma=int(rng.integers(2, 6)))
    if grade == 2:
        option = int(rng.integers(0, 3))  # 0: HE only, 1: EX only, 2: both
        he = int(rng.integers(1, 6)) if option != 1 else 0
        ex = int(rng.integers(1, 7)) if option != 0 else 0
        return LesionPlan(ma=int(rng.integers(2, 9)), he=he, ex=ex)
    if grade == 3:
        q = [int(v) for v in rng.integers(3, 6, size=4)]
        return LesionPlan(
            ma=int(rng.integers(3, 11)), he_per_quadrant=(q[0], q[1], q[2], q[3]), ex=int(rng.integers(0, 7))
        )
    base = plan_lesions(int(rng.integers(1, 4)), rng)
    return LesionPlan(base.ma, base.he_per_quadrant, base.he, base.ex, int(rng.integers(1, 4)))


def quadrant_of(x: float, y: float, size: int, eye: str) -> int:
    """Index into ``QUADRANTS`` of a point: superior is above the FOV centre, temporal is away from the disc.

    Examples:
        >>> QUADRANTS[quadrant_of(10.0, 100.0, 128, "right")]
        'inferior temporal'
    """
    centre = (size - 1) / 2.0
    superior = y < centre
    temporal = x < centre if eye == "right" else x > centre
    return (0 if superior else 2) + (0 if temporal else 1)


class _Placer:
    """Rejection sampling of non-overlapping lesion centres inside the FOV and off the disc."""

    def __init__(self, rng: np.random.Generator, size: int, eye: str, disc: tuple[float, float], disc_r: float):
        self.rng, self.size, self.eye = rng, size, eye
        self.centre = (size - 1) / 2.0
        self.fov_r = 0.46 * size
        self.taken: list[tuple[float, float, float]] = [(disc[0], disc[1], disc_r)]

    def fits(self, xs: FloatArray, ys: FloatArray, reach: float, margin: float) -> NDArray[np.bool_]:
        ok = np.hypot(xs - self.centre, ys - self.centre) <= self.fov_r - reach - 1.5
        for tx, ty, tr in self.taken:
            ok &= np.hypot(xs - tx, ys - ty) >= tr + reach + margin
        return np.asarray(ok, dtype=bool)

    def place(self, reach: float, quadrant: int | None) -> tuple[float, float]:
        for margin in (2.0, 1.5, 1.0):
            for _ in range(30):
                q = self.rng.integers(0, 4, size=64) if quadrant is None else np.full(64, quadrant)
                angle = self.rng.uniform(0.05, math.pi / 2 - 0.05, size=64)
                dist = self.fov_r * np.sqrt(self.rng.uniform(0.0, 1.0, size=64))
                temporal_sign = -1.0 if self.eye == "right" else 1.0
                sx = np.where(q % 2 == 0, temporal_sign, -temporal_sign)
                sy = np.where(q < 2, -1.0, 1.0)
                xs = (self.centre + sx * dist * np.cos(angle)).astype(np.float32)
                ys = (self.centre + sy * dist * np.sin(angle)).astype(np.float32)
                hits = np.flatnonzero(self.fits(xs, ys, reach, margin))
                if hits.size:
                    x, y = float(xs[hits[0]]), float(ys[hits[0]])
                    self.taken.append((x, y, reach))
                    return x, y
        raise RuntimeError(f"no room for another lesion of reach {reach:.2f} px at size {self.size}")


def _nv_tuft(rng: np.random.Generator, reach: float, width: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Offsets and radii of a tuft: 3–5 tortuous strands kept within ``reach`` of its centre."""
    xs, ys = [], []
    for _ in range(int(rng.integers(3, 6))):
        steps = int(rng.integers(8, 13))
        heading = rng.uniform(0.0, 2.0 * math.pi) + np.cumsum(rng.normal(0.0, 0.9, size=steps))
        step = reach / 3.5
        px = np.cumsum(step * np.cos(heading)) * 0.6
        py = np.cumsum(step * np.sin(heading)) * 0.6
        norm = np.maximum(1.0, np.hypot(px, py) / reach)
        xs.append(px / norm)
        ys.append(py / norm)
    parts = [
        tube_points(x.astype(np.float32), y.astype(np.float32), np.full(x.size, width, np.float32))
        for x, y in zip(xs, ys, strict=True)
    ]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


def place_lesions(
    plan: LesionPlan,
    rng: np.random.Generator,
    size: int,
    eye: str,
    disc: tuple[float, float],
    disc_radius: float,
) -> list[LesionShape]:
    """Sizes and non-overlapping positions of the planned lesions (NV first, then HE, EX, MA).

    Args:
        plan: From :func:`plan_lesions`.
        rng: Source of randomness.
        size: Image side in pixels.
        eye: ``"left"`` or ``"right"`` (decides which side is temporal).
        disc: Optic-disc centre ``(x, y)`` in pixels.
        disc_radius: Optic-disc radius in pixels.

    Returns:
        One :class:`LesionShape` per planned lesion, inside the FOV, off the disc and apart.

    Examples:
        >>> import numpy as np
        >>> shapes = place_lesions(LesionPlan(ma=2, ex=1), np.random.default_rng(0), 64, "right", (45.0, 32.0), 4.5)
        >>> [s.kind for s in shapes]
        ['EX', 'MA', 'MA']
    """
    unit = size / 128.0
    placer = _Placer(rng, size, eye, disc, disc_radius + 1.0)
    shapes: list[LesionShape] = []
    for _ in range(plan.nv):
        reach = max(2.5, size * float(rng.uniform(0.035, 0.05)))
        width = max(0.75, size / 256.0 * float(rng.uniform(0.8, 1.1)))
        for _attempt in range(200):
            angle = rng.uniform(0.0, 2.0 * math.pi)
            dist = disc_radius + reach + 1.5 + float(rng.uniform(0.0, 0.05 * size))
            x, y = disc[0] + dist * math.cos(angle), disc[1] + dist * math.sin(angle)
            if placer.fits(np.asarray([x], np.float32), np.asarray([y], np.float32), reach + width, 1.5)[0]:
                placer.taken.append((x, y, reach + width))
                break
        else:
            x, y = placer.place(reach + width, None)
        shapes.append(LesionShape("NV", x, y, reach + width, points=_nv_tuft(rng, reach, width)))
    he_quadrants: list[int | None] = []
    if plan.he_per_quadrant is not None:
        he_quadrants += [q for q, n in enumerate(plan.he_per_quadrant) for _ in range(n)]
    he_quadrants += [None] * plan.he
    for quadrant in he_quadrants:
        a = max(1.25, unit * float(rng.uniform(1.5, 3.5)))
        b = max(1.0, a * float(rng.uniform(0.65, 1.0)))
        x, y = placer.place(a, quadrant)
        shapes.append(LesionShape("HE", x, y, a, {"a": a, "b": b, "angle": float(rng.uniform(0.0, math.pi))}))
    for kind, count, low, high in (("EX", plan.ex, 0.9, 1.7), ("MA", plan.ma, 0.85, 1.25)):
        for _ in range(count):
            r = max(1.0, unit * float(rng.uniform(low, high)))
            x, y = placer.place(r, None)
            shapes.append(LesionShape(kind, x, y, r, {"a": r, "b": r, "angle": 0.0}))
    for shape in shapes:
        low, high = (0.55, 0.8) if shape.kind == "EX" else (0.8, 1.0)
        shape.params["strength"] = float(rng.uniform(low, high))
    return shapes


def draw_lesions(
    image: FloatArray, shapes: list[LesionShape], eye: str
) -> tuple[FloatArray, dict[str, BoolArray], list[Lesion]]:
    """Draw lesions onto a copy of ``image``; return it, the per-type masks and the lesions with boxes.

    Examples:
        >>> import numpy as np
        >>> img = np.full((64, 64, 3), 0.6, np.float32)
        >>> shapes = place_lesions(LesionPlan(ma=3), np.random.default_rng(0), 64, "left", (10.0, 32.0), 4.0)
        >>> out, masks, lesions = draw_lesions(img, shapes, "left")
        >>> len(lesions), bool(masks["MA"].any()), bool(masks["HE"].any())
        (3, True, False)
    """
    size = image.shape[0]
    out = image.copy()
    masks = {kind: np.zeros((size, size), dtype=bool) for kind in LESION_TYPES}
    lesions = []
    for shape in shapes:
        strength = shape.params["strength"]
        if shape.points is not None:
            px, py, pr = shape.points
            window = Window.around(shape.x, shape.y, shape.reach + 1.0, size)
            full = splat_discs(size, px + np.float32(shape.x), py + np.float32(shape.y), pr)
            alpha = full[window.slices()]
        else:
            window = Window.around(shape.x, shape.y, shape.reach + 1.0, size)
            p = shape.params
            alpha = ellipse_alpha(window, shape.x, shape.y, p["a"], p["b"], p["angle"])
        mask = alpha >= 0.5
        patch = out[window.slices()]
        weight = (alpha * np.float32(strength))[:, :, None]
        if shape.kind == "EX":
            yellow = np.asarray(_YELLOW, dtype=np.float32)
            patch[...] = patch * (1.0 - weight) + weight * yellow
        else:
            loss = 1.0 - np.asarray(_DARK[shape.kind], dtype=np.float32)
            patch[...] = patch * (1.0 - weight * loss)
        masks[shape.kind][window.slices()] |= mask
        lesions.append(
            Lesion(
                shape.kind,
                shape.x,
                shape.y,
                shape.reach,
                quadrant_of(shape.x, shape.y, size, eye),
                mask_box(mask, window),
            )
        )
    return out, masks, lesions


def count_lesions(lesions: list[Lesion]) -> dict[str, list[int]]:
    """Counts per type and quadrant (``QUADRANTS`` order), for every type in ``LESION_TYPES``.

    Examples:
        >>> count_lesions([Lesion("MA", 3.0, 4.0, 1.0, 2, (2, 3, 4, 5))])["MA"]
        [0, 0, 1, 0]
    """
    counts = {kind: [0] * len(QUADRANTS) for kind in LESION_TYPES}
    for lesion in lesions:
        counts[lesion.kind][lesion.quadrant] += 1
    return counts


def totals(counts: Mapping[str, list[int]]) -> dict[str, int]:
    """Total count per lesion type.

    Examples:
        >>> totals({"MA": [1, 0, 2, 0], "HE": [0, 0, 0, 0]})
        {'MA': 3, 'HE': 0}
    """
    return {kind: int(sum(values)) for kind, values in counts.items()}
