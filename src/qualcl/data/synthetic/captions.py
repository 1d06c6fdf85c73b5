"""Template captions of synthetic fundus images, generated from their parameters.

A caption names the eye, the ICDR grade, the lesion counts, where the lesions are and the image
quality with its degradation factors, for example::

    left eye, moderate non-proliferative diabetic retinopathy with 6 microaneurysms and 2 hard
    exudates mostly in the inferior temporal quadrant; image quality usable (mild blur)

Paraphrase slots (how the eye is named, the connecting verb) vary with an optional generator; the
keywords (eye, grade name, counts, quadrant, quality name, factors) are always present, so that
zero-shot grading and caption keyword accuracy are meaningful (``docs/data.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qualcl.data.degrade import FACTORS, QUALITY_NAMES
from qualcl.data.synthetic.grading import GRADE_NAMES, LESION_NAMES, QUADRANTS

__all__ = ["FACTOR_PHRASES", "make_caption"]

#: How each degradation factor is named in captions.
FACTOR_PHRASES: dict[str, str] = {"blur": "blur", "illumination": "uneven illumination", "spot": "spot artefacts"}

_EYE_TEMPLATES = ("{eye} eye", "fundus photograph of the {eye} eye", "{eye} eye fundus")
_CONNECTORS = ("with", "showing", "presenting")
_NO_LESION = ("", " and no visible lesions", ", no lesions seen")


def _choose(options: Sequence[str], rng: np.random.Generator | None) -> str:
    return options[0] if rng is None else options[int(rng.integers(0, len(options)))]


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _lesion_phrase(counts: Mapping[str, Sequence[int]]) -> str:
    parts = []
    for kind in ("MA", "HE", "EX"):
        total = int(sum(counts.get(kind, ())))
        if total:
            singular, plural = LESION_NAMES[kind]
            parts.append(f"{total} {singular if total == 1 else plural}")
    nv = int(sum(counts.get("NV", ())))
    if nv:
        parts.append(f"neovascularisation near the optic disc ({nv} {'tuft' if nv == 1 else 'tufts'})")
    return _join(parts) if parts else ""


def _location_phrase(counts: Mapping[str, Sequence[int]]) -> str:
    per_quadrant = [sum(int(counts.get(kind, (0,) * 4)[q]) for kind in ("MA", "HE", "EX")) for q in range(4)]
    occupied = sum(1 for n in per_quadrant if n)
    if occupied == 0:
        return ""
    if occupied == 4:
        return " in all four quadrants"
    best = QUADRANTS[int(np.argmax(per_quadrant))]
    return f" in the {best} quadrant" if occupied == 1 else f" mostly in the {best} quadrant"


def _quality_phrase(quality: int, degradation: Mapping[str, Any] | None) -> str:
    phrase = f"image quality {QUALITY_NAMES[quality]}"
    factors = (degradation or {}).get("factors", {})
    named = [f"{factors[f]['severity']} {FACTOR_PHRASES[f]}" for f in FACTORS if f in factors]
    return f"{phrase} ({_join(named)})" if named else phrase


def make_caption(
    eye: str,
    grade: int,
    counts: Mapping[str, Sequence[int]],
    quality: int,
    degradation: Mapping[str, Any] | None = None,
    rng: np.random.Generator | None = None,
) -> str:
    """Caption of one synthetic fundus image.

    Args:
        eye: ``"left"`` or ``"right"``.
        grade: DR grade 0–4.
        counts: Lesion counts per type and quadrant (as for ``grade_from_lesions``).
        quality: EyeQ quality code 0–2.
        degradation: Degradation parameters (``{"factors": {name: {"severity": ...}}}``), if any.
        rng: Picks the paraphrases; the first template of each slot when ``None``.

    Returns:
        The caption.

    Examples:
        >>> make_caption("left", 2, {"MA": [0, 0, 6, 0], "EX": [0, 0, 2, 0]}, 1,
        ...              {"factors": {"blur": {"severity": "mild"}}})
        'left eye, moderate non-proliferative diabetic retinopathy with 6 microaneurysms and 2 hard exudates in the inferior temporal quadrant; image quality usable (mild blur)'
    """  # noqa: E501
    if eye not in ("left", "right"):
        raise ValueError(f"eye must be 'left' or 'right', got {eye!r}")
    if grade not in range(len(GRADE_NAMES)):
        raise ValueError(f"grade must be in 0..4, got {grade!r}")
    if quality not in range(len(QUALITY_NAMES)):
        raise ValueError(f"quality must be 0, 1 or 2, got {quality!r}")
    head = _choose(_EYE_TEMPLATES, rng).format(eye=eye)
    connector = _choose(_CONNECTORS, rng)
    lesions = _lesion_phrase(counts)
    if lesions:
        body = f"{GRADE_NAMES[grade]} {connector} {lesions}{_location_phrase(counts)}"
    else:
        body = GRADE_NAMES[grade] + _choose(_NO_LESION, rng)
    return f"{head}, {body}; {_quality_phrase(quality, degradation)}"
