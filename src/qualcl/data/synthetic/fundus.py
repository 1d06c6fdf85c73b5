"""SynthFundus: seeded procedural fundus photographs with DR grade, lesions and quality labels.

Image ``i`` belongs to patient ``i // 2`` and is the left (even ``i``) or right (odd ``i``) eye.
Seeds come from :class:`numpy.random.SeedSequence` keyed by the master seed and the patient or image
index, so image ``i`` is the same whatever the number of images. A patient's anatomy (background,
texture, vessels, disc, macula) is shared by both eyes (mirrored); each eye draws its own grade
(from the grade prior), lesions and quality (from ``lq_ratio``), from separate streams, so grade
and quality are independent of each other and of the anatomy.

Reference:
    ``docs/data.md`` (SynthFundus); degradations after Shen et al., TMI 2021.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qualcl.data.degrade import apply_degradation, factor_labels, sample_degradation
from qualcl.data.synthetic import grading
from qualcl.data.synthetic.anatomy import Anatomy, RenderedEye, mirror_eye, render_eye, sample_anatomy
from qualcl.data.synthetic.captions import make_caption
from qualcl.data.synthetic.grading import LESION_TYPES, grade_from_lesions
from qualcl.data.synthetic.lesions import Lesion, count_lesions, draw_lesions, place_lesions, plan_lesions, totals

__all__ = [
    "EYES",
    "GENERATOR_VERSION",
    "MASK_NAMES",
    "MIN_SIZE",
    "FundusSample",
    "draw_labels",
    "generate_fundus",
    "generate_patient",
    "image_seed",
    "patient_id",
    "patient_seed",
]

#: Version of the generator; bumped whenever the same seed would give different images.
GENERATOR_VERSION = "1.0.0"

#: Eye of even / odd image indices.
EYES: tuple[str, str] = ("left", "right")

#: Masks saved per image: the lesion types, the optic disc and the vessels.
MASK_NAMES: tuple[str, ...] = (*LESION_TYPES, "OD", "vessels")

#: Smallest supported image side (lesions must stay ≥ 1 px and fit without overlapping).
MIN_SIZE = 48

_PATIENT_STREAM, _IMAGE_STREAM = 0, 1
_DEFAULT_LQ_RATIO = 0.34

FloatArray = NDArray[np.float32]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class FundusSample:
    """One generated fundus photograph with its ground truth.

    Attributes:
        index: Image index in the dataset.
        patient_id: Patient identifier (shared by the two eyes).
        eye: ``"left"`` or ``"right"``.
        seed: Per-image seed (grade, lesions, quality, degradation and caption streams).
        patient_seed: Seed of the patient's anatomy.
        image: ``(S, S, 3)`` float32 RGB in ``[0, 1]`` after degradation, black outside the FOV.
        clean_image: The same image before degradation.
        fov: ``(S, S)`` bool field of view.
        masks: ``(S, S)`` bool masks by name: ``MA``, ``HE``, ``EX``, ``NV``, ``OD``, ``vessels``.
        dr_grade: DR grade 0–4 (``grade_from_lesions(counts)``).
        quality: EyeQ quality code, 0 Good, 1 Usable, 2 Reject.
        counts: Lesion counts per type and quadrant.
        lesions: The lesions with centres, sizes and boxes.
        disc: Optic-disc centre ``(x, y)`` in pixels.
        disc_radius: Optic-disc radius in pixels.
        fovea: Fovea centre ``(x, y)`` in pixels.
        degradation: Degradation parameters (``sample_degradation``'s format).
        caption: Template caption.
        anatomy: The patient's anatomy parameters.

    Examples:
        >>> sample = generate_fundus(0, size=64, seed=0)
        >>> sample.stem, sample.to_record()["image"], sample.masks["OD"].shape
        ('00000_left', '00000_left.png', (64, 64))
    """

    index: int
    patient_id: str
    eye: str
    seed: int
    patient_seed: int
    image: FloatArray
    clean_image: FloatArray
    fov: BoolArray
    masks: Mapping[str, BoolArray]
    dr_grade: int
    quality: int
    counts: Mapping[str, list[int]]
    lesions: tuple[Lesion, ...]
    disc: tuple[float, float]
    disc_radius: float
    fovea: tuple[float, float]
    degradation: dict[str, Any]
    caption: str
    anatomy: Anatomy

    @property
    def stem(self) -> str:
        """File stem ``{patient_id}_{eye}`` (EyePACS style)."""
        return f"{self.patient_id}_{self.eye}"

    @property
    def boxes(self) -> list[tuple[int, int, int, int, str]]:
        """Lesion boxes ``(x1, y1, x2, y2, type)``, inclusive-exclusive pixels."""
        return [(*lesion.box, lesion.kind) for lesion in self.lesions]

    def to_record(self) -> dict[str, Any]:
        """JSON-ready ground truth of this image (everything but the pixel arrays)."""
        return {
            "index": self.index,
            "image": f"{self.stem}.png",
            "patient_id": self.patient_id,
            "eye": self.eye,
            "seed": self.seed,
            "patient_seed": self.patient_seed,
            "dr_grade": self.dr_grade,
            "quality": self.quality,
            "quality_factors": factor_labels(self.degradation),
            "degradation_code": self.degradation["code"],
            "lesion_counts": totals(self.counts),
            "lesion_counts_by_quadrant": {kind: list(v) for kind, v in self.counts.items()},
            "boxes": [list(box) for box in self.boxes],
            "lesions": [
                {"type": les.kind, "x": les.x, "y": les.y, "radius": les.radius, "quadrant": les.quadrant}
                for les in self.lesions
            ],
            "landmarks": {"disc": list(self.disc), "disc_radius": self.disc_radius, "fovea": list(self.fovea)},
            "caption": self.caption,
            "degradation": self.degradation,
            "anatomy": self.anatomy.summary(),
        }


def check_seed(seed: int) -> int:
    """Validate a master seed (a non-negative integer).

    Examples:
        >>> check_seed(7)
        7
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_index(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_size(size: int) -> int:
    """Validate an image side (an integer ≥ :data:`MIN_SIZE`).

    Examples:
        >>> check_size(64)
        64
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE} (lesions must stay >= 1 px), got {size!r}")
    return int(size)


def check_lq_ratio(lq_ratio: float) -> float:
    """Validate a low-quality ratio (a finite number in ``[0, 1]``).

    Examples:
        >>> check_lq_ratio(0.34)
        0.34
    """
    if isinstance(lq_ratio, bool) or not isinstance(lq_ratio, (int, float)) or not 0.0 <= lq_ratio <= 1.0:
        raise ValueError(f"lq_ratio must be a number in [0, 1], got {lq_ratio!r}")
    return float(lq_ratio)


def _derive(seed: int, stream: int, index: int) -> int:
    state = np.random.SeedSequence(seed, spawn_key=(stream, index)).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def patient_seed(patient: int, seed: int = 0) -> int:
    """64-bit seed of a patient's anatomy, from the master ``seed`` (``SeedSequence``).

    Examples:
        >>> patient_seed(3, seed=0) == patient_seed(3, seed=0) != patient_seed(4, seed=0)
        True
    """
    return _derive(check_seed(seed), _PATIENT_STREAM, _check_index("patient", patient))


def image_seed(index: int, seed: int = 0) -> int:
    """64-bit per-image seed of image ``index``, from the master ``seed`` (``SeedSequence``).

    Examples:
        >>> image_seed(0, seed=1) == image_seed(0, seed=1)
        True
    """
    return _derive(check_seed(seed), _IMAGE_STREAM, _check_index("index", index))


def patient_id(patient: int) -> str:
    """Identifier of patient number ``patient`` (zero-padded, EyePACS-like numbers).

    Examples:
        >>> patient_id(7)
        '00007'
    """
    return f"{_check_index('patient', patient):05d}"


def _streams(seed_of_image: int) -> list[np.random.Generator]:
    """Independent generators: labels, lesions, degradation, caption."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed_of_image).spawn(4)]


def _labels(rng: np.random.Generator, prior: NDArray[np.float64], lq_ratio: float) -> tuple[int, int]:
    grade = int(rng.choice(5, p=prior))
    u = float(rng.uniform())
    quality = 0 if u >= lq_ratio else (1 if u < lq_ratio / 2.0 else 2)
    return grade, quality


def draw_labels(
    index: int, *, seed: int = 0, grade_prior: str | Sequence[float] = "balanced", lq_ratio: float = _DEFAULT_LQ_RATIO
) -> tuple[int, int]:
    """``(dr_grade, quality)`` image ``index`` will get, without rendering it.

    The grade comes from ``grade_prior``; quality is Good with probability ``1 − lq_ratio`` and
    Usable or Reject with ``lq_ratio / 2`` each, from the same draw-independent stream.

    Examples:
        >>> grade, quality = draw_labels(5, seed=0)
        >>> (grade, quality) == (generate_fundus(5, size=64, seed=0).dr_grade, generate_fundus(5, size=64, seed=0).quality)
        True
    """  # noqa: E501
    prior = grading.grade_prior(grade_prior)
    return _labels(_streams(image_seed(index, seed))[0], prior, check_lq_ratio(lq_ratio))


def _render_one(
    index: int,
    eye_image: RenderedEye,
    anatomy: Anatomy,
    *,
    seed: int,
    pseed: int,
    prior: NDArray[np.float64],
    lq_ratio: float,
    grade: int | None,
    quality: int | None,
) -> FundusSample:
    eye = EYES[index % 2]
    iseed = image_seed(index, seed)
    label_rng, lesion_rng, degrade_rng, caption_rng = _streams(iseed)
    drawn_grade, drawn_quality = _labels(label_rng, prior, lq_ratio)
    grade = drawn_grade if grade is None else grade
    quality = drawn_quality if quality is None else quality
    size = eye_image.image.shape[0]
    shapes = place_lesions(
        plan_lesions(grade, lesion_rng), lesion_rng, size, eye, eye_image.disc, eye_image.disc_radius
    )
    clean, lesion_masks, lesions = draw_lesions(eye_image.image, shapes, eye)
    counts = count_lesions(lesions)
    if grade_from_lesions(counts) != grade:  # the plan guarantees this; fail loudly if it ever breaks
        raise RuntimeError(f"image {index}: lesions {counts} do not give grade {grade}")
    degradation = sample_degradation(quality, degrade_rng, eye_image.fov)
    image = apply_degradation(clean, degradation, eye_image.fov) if degradation["factors"] else clean
    masks = {**lesion_masks, "OD": eye_image.disc_mask, "vessels": eye_image.vessels}
    caption = make_caption(eye, grade, counts, quality, degradation, caption_rng)
    return FundusSample(
        index=index,
        patient_id=patient_id(index // 2),
        eye=eye,
        seed=iseed,
        patient_seed=pseed,
        image=image,
        clean_image=clean,
        fov=eye_image.fov,
        masks=masks,
        dr_grade=grade,
        quality=quality,
        counts=counts,
        lesions=tuple(lesions),
        disc=eye_image.disc,
        disc_radius=eye_image.disc_radius,
        fovea=eye_image.fovea,
        degradation=degradation,
        caption=caption,
        anatomy=anatomy,
    )


def _check_forced(name: str, value: int | None, levels: int) -> int | None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < levels
    ):
        raise ValueError(f"{name} must be None or an integer in 0..{levels - 1}, got {value!r}")
    return None if value is None else int(value)


def generate_patient(
    patient: int,
    *,
    size: int = 128,
    seed: int = 0,
    grade_prior: str | Sequence[float] = "balanced",
    lq_ratio: float = _DEFAULT_LQ_RATIO,
    eyes: Sequence[str] = EYES,
    grades: Mapping[str, int] | None = None,
    qualities: Mapping[str, int] | None = None,
) -> list[FundusSample]:
    """Generate the eyes of one patient (images ``2·patient`` (left) and ``2·patient + 1`` (right)).

    Args:
        patient: Patient number.
        size: Image side in pixels (≥ :data:`MIN_SIZE`).
        seed: Master seed.
        grade_prior: ``"balanced"``, ``"eyepacs"`` (≈ 73 % grade 0) or five weights.
        lq_ratio: Probability that an image is low quality (Usable or Reject, half each).
        eyes: Which eyes to generate, among ``"left"`` and ``"right"``.
        grades: Force the grade of some eyes (``{"left": 3}``); drawn from the prior otherwise.
        qualities: Force the quality code of some eyes.

    Returns:
        One :class:`FundusSample` per requested eye, left first.

    Examples:
        >>> left, right = generate_patient(0, size=64, seed=0)
        >>> left.patient_id == right.patient_id, left.eye, right.eye
        (True, 'left', 'right')

    Reference:
        ``docs/data.md`` (patient structure).
    """
    size = check_size(size)
    lq_ratio = check_lq_ratio(lq_ratio)
    prior = grading.grade_prior(grade_prior)
    number = _check_index("patient", patient)
    wanted = [eye for eye in EYES if eye in eyes]
    if not wanted or any(eye not in EYES for eye in eyes):
        raise ValueError(f"eyes must be a non-empty subset of {EYES}, got {eyes!r}")
    pseed = patient_seed(number, seed)
    anatomy = sample_anatomy(np.random.default_rng(pseed))
    right = render_eye(anatomy, size, "right")  # rendered once; the left eye is its mirror image
    samples = []
    for eye in wanted:
        index = 2 * number + EYES.index(eye)
        samples.append(
            _render_one(
                index,
                right if eye == "right" else mirror_eye(right),
                anatomy,
                seed=seed,
                pseed=pseed,
                prior=prior,
                lq_ratio=lq_ratio,
                grade=_check_forced("grades", (grades or {}).get(eye), 5),
                quality=_check_forced("qualities", (qualities or {}).get(eye), 3),
            )
        )
    return samples


def generate_fundus(
    index: int,
    *,
    size: int = 128,
    seed: int = 0,
    grade_prior: str | Sequence[float] = "balanced",
    lq_ratio: float = _DEFAULT_LQ_RATIO,
    grade: int | None = None,
    quality: int | None = None,
) -> FundusSample:
    """Generate image ``index`` of the dataset defined by ``seed`` (the same whatever its size).

    Args:
        index: Image index; patient ``index // 2``, left eye when even.
        size: Image side in pixels (≥ :data:`MIN_SIZE`).
        seed: Master seed.
        grade_prior: ``"balanced"``, ``"eyepacs"`` or five weights.
        lq_ratio: Probability of a low-quality image.
        grade: Force the DR grade (lesions are drawn for it).
        quality: Force the quality code.

    Returns:
        The image with its ground truth.

    Examples:
        >>> sample = generate_fundus(3, size=64, seed=0)
        >>> sample.image.shape, sample.eye, sample.dr_grade == grade_from_lesions(sample.counts)
        ((64, 64, 3), 'right', True)

    Reference:
        ``docs/data.md``.
    """
    number = _check_index("index", index)
    grade = _check_forced("grade", grade, 5)
    quality = _check_forced("quality", quality, 3)
    (sample,) = generate_patient(
        number // 2,
        size=size,
        seed=seed,
        grade_prior=grade_prior,
        lq_ratio=lq_ratio,
        eyes=(EYES[number % 2],),
        grades=None if grade is None else {EYES[number % 2]: grade},
        qualities=None if quality is None else {EYES[number % 2]: quality},
    )
    return sample
