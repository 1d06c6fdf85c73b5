"""The synthetic fundus set's fixed, deterministic DR-grade rule and its grade priors.

The rule is ICDR-like (``docs/data.md``) and is a pure function of the lesion counts:

- 4 (proliferative): neovascularisation (NV) present, whatever else;
- 3 (severe NPDR): haemorrhages (HE) in all four quadrants, at least 3 in each (a "4-2-1"-style rule);
- 2 (moderate NPDR): any HE or hard exudate (EX);
- 1 (mild NPDR): microaneurysms (MA) only;
- 0: no lesion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "GRADE_NAMES",
    "GRADE_PRIORS",
    "LESION_NAMES",
    "LESION_TYPES",
    "QUADRANTS",
    "grade_from_lesions",
    "grade_prior",
]

#: Lesion types, in the order used everywhere (counts, masks, captions).
LESION_TYPES: tuple[str, ...] = ("MA", "HE", "EX", "NV")

#: Plain names of the lesion types (singular, plural).
LESION_NAMES: dict[str, tuple[str, str]] = {
    "MA": ("microaneurysm", "microaneurysms"),
    "HE": ("haemorrhage", "haemorrhages"),
    "EX": ("hard exudate", "hard exudates"),
    "NV": ("neovascular tuft", "neovascular tufts"),
}

#: Quadrants around the FOV centre; "temporal" is the fovea's side, "nasal" the optic disc's.
QUADRANTS: tuple[str, ...] = ("superior temporal", "superior nasal", "inferior temporal", "inferior nasal")

#: ICDR names of the grades 0–4.
GRADE_NAMES: tuple[str, ...] = (
    "no diabetic retinopathy",
    "mild non-proliferative diabetic retinopathy",
    "moderate non-proliferative diabetic retinopathy",
    "severe non-proliferative diabetic retinopathy",
    "proliferative diabetic retinopathy",
)

#: Named grade priors: balanced, or the EyePACS/Kaggle-DR training distribution (25 810 / 2 443 /
#: 5 292 / 873 / 708 of 35 126 images, ≈ 73 % grade 0).
GRADE_PRIORS: dict[str, tuple[float, ...]] = {
    "balanced": (0.2, 0.2, 0.2, 0.2, 0.2),
    "eyepacs": (0.7348, 0.0696, 0.1507, 0.0249, 0.0200),
}

#: Minimum haemorrhages per quadrant, in all four quadrants, for grade 3.
SEVERE_HE_PER_QUADRANT = 3


def grade_prior(prior: str | Sequence[float]) -> NDArray[np.float64]:
    """Probabilities of grades 0–4 from a prior name in :data:`GRADE_PRIORS` or five weights.

    Examples:
        >>> grade_prior("balanced").tolist()
        [0.2, 0.2, 0.2, 0.2, 0.2]
    """
    if isinstance(prior, str):
        if prior not in GRADE_PRIORS:
            raise ValueError(f"grade_prior must be one of {sorted(GRADE_PRIORS)} or 5 weights, got {prior!r}")
        weights = np.asarray(GRADE_PRIORS[prior], dtype=np.float64)
    else:
        weights = np.asarray(list(prior), dtype=np.float64)
        if weights.shape != (5,) or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"grade_prior must be 5 finite non-negative weights with a positive sum, got {prior!r}")
    probabilities: NDArray[np.float64] = weights / weights.sum()
    return probabilities


def _per_quadrant(counts: Mapping[str, Sequence[int]], kind: str) -> list[int]:
    value = counts.get(kind, (0, 0, 0, 0))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != len(QUADRANTS):
        raise ValueError(f"counts[{kind!r}] must be 4 per-quadrant counts in QUADRANTS order, got {value!r}")
    numbers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or item < 0:
            raise ValueError(f"counts[{kind!r}] must hold non-negative integers, got {value!r}")
        numbers.append(int(item))
    return numbers


def grade_from_lesions(counts: Mapping[str, Sequence[int]]) -> int:
    """DR grade 0–4 from lesion counts per type and quadrant (the synthetic set's fixed rule).

    Args:
        counts: Maps a lesion type (``"MA"``, ``"HE"``, ``"EX"``, ``"NV"``; a missing type counts as
            none) to its 4 counts per quadrant, in :data:`QUADRANTS` order.

    Returns:
        4 if NV is present; else 3 if every quadrant has ≥ 3 HE; else 2 if any HE or EX; else 1 if
        any MA; else 0.

    Raises:
        ValueError: An unknown lesion type, or counts that are not 4 non-negative integers.

    Examples:
        >>> grade_from_lesions({"MA": [1, 0, 2, 0]})
        1
        >>> grade_from_lesions({"MA": [1, 0, 0, 0], "HE": [3, 4, 3, 5]})
        3

    Reference:
        ``docs/data.md`` (grade rule, ICDR-like).
    """
    if not isinstance(counts, Mapping):
        raise ValueError(f"counts must be a mapping of lesion type to 4 per-quadrant counts, got {counts!r}")
    unknown = sorted(set(counts) - set(LESION_TYPES))
    if unknown:
        raise ValueError(f"counts has unknown lesion type(s) {unknown}; expected among {LESION_TYPES}")
    ma, he, ex, nv = (_per_quadrant(counts, kind) for kind in LESION_TYPES)
    if sum(nv) > 0:
        return 4
    if min(he) >= SEVERE_HE_PER_QUADRANT:
        return 3
    if sum(he) + sum(ex) > 0:
        return 2
    if sum(ma) > 0:
        return 1
    return 0
