"""CoMCL's four levels from disease and quality labels, with each dataset's quality mapping."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

from qualcl._validation import check_int, check_integer_tensor

__all__ = ["LEVEL_NAMES", "LOW_QUALITY", "QUALITY_CODES", "split_levels"]

#: CoMCL's levels: HQ lesion, LQ lesion, HQ healthy, LQ healthy (ids 0..3).
LEVEL_NAMES = ("L", "LQ_L", "H", "LQ_H")

#: Quality codes that count as low quality, per dataset. EyeQ: 0 Good, 1 Usable, 2 Reject; CoMCL's
#: 33.4 % LQ matches Usable ∪ Reject on EyeQ train (docs/comcl.md, "Decisions"). The synthetic set uses EyeQ's
#: codes. DeepDRiD: "Overall quality" 0 = not good enough for diagnosis.
LOW_QUALITY: dict[str, frozenset[int]] = {
    "eyeq": frozenset({1, 2}),
    "synthetic": frozenset({1, 2}),
    "deepdrid": frozenset({0}),
}

#: Every quality code of each dataset: a code outside them is a data error, never read as "high quality".
QUALITY_CODES: dict[str, frozenset[int]] = {
    "eyeq": frozenset({0, 1, 2}),
    "synthetic": frozenset({0, 1, 2}),
    "deepdrid": frozenset({0, 1}),
}


def split_levels(
    disease: Tensor,
    quality: Tensor,
    low_quality: Collection[int] | str = "eyeq",
    *,
    quality_codes: Collection[int] | None = None,
) -> Tensor:
    """Level id (0 ``L``, 1 ``LQ_L``, 2 ``H``, 3 ``LQ_H``) of each image.

    "Lesion" means disease label > 0 (DR grade ≥ 1), "healthy" grade 0; "LQ" means a quality code
    in ``low_quality``. Quality codes must be among the dataset's codes (:data:`QUALITY_CODES` for a
    dataset name, or ``quality_codes``), so that an unknown code is never read as high quality;
    with a custom ``low_quality`` and no ``quality_codes``, every code ``>= 0`` outside
    ``low_quality`` counts as high quality.

    Args:
        disease: ``(N,)`` integer disease labels ``>= 0`` (0 = healthy).
        quality: ``(N,)`` integer quality codes.
        low_quality: The codes that are low quality, or a dataset name in ``LOW_QUALITY``.
        quality_codes: Every valid quality code, with a custom ``low_quality`` collection.

    Raises:
        TypeError: Non-integer labels or codes.
        ValueError: Shapes differ, a disease label is negative, or a quality code is unknown.

    Returns:
        ``(N,)`` long level ids indexing ``LEVEL_NAMES``.

    Examples:
        >>> import torch
        >>> split_levels(torch.tensor([2, 3, 0, 0]), torch.tensor([0, 2, 0, 1])).tolist()
        [0, 1, 2, 3]

    Reference:
        CoMCL (Hou et al., MICCAI 2024), Sec. 2.1.
    """
    if isinstance(low_quality, str):
        if low_quality not in LOW_QUALITY:
            raise ValueError(f"unknown dataset {low_quality!r} for low_quality; known: {sorted(LOW_QUALITY)}")
        if quality_codes is None:
            quality_codes = QUALITY_CODES[low_quality]
        low_quality = LOW_QUALITY[low_quality]
    low_quality = frozenset(check_int("low_quality", code, minimum=0) for code in low_quality)
    if quality_codes is not None:
        quality_codes = frozenset(check_int("quality_codes", code, minimum=0) for code in quality_codes)
        if not low_quality <= quality_codes:
            raise ValueError(f"low_quality {sorted(low_quality)} must be among quality_codes {sorted(quality_codes)}")
    disease = check_integer_tensor("disease", disease, what="disease labels")
    quality = check_integer_tensor("quality", quality, what="quality codes")
    if disease.shape != quality.shape or disease.ndim != 1:
        raise ValueError(
            f"disease and quality must be (N,) of equal length, got {tuple(disease.shape)} and {tuple(quality.shape)}"
        )
    if disease.numel() and bool((disease < 0).any()):
        raise ValueError(f"disease labels must be >= 0 (0 = healthy), got {int(disease.min())}")
    known = quality >= 0
    if quality_codes is not None:
        known &= torch.isin(quality, torch.tensor(sorted(quality_codes), device=quality.device))
    if not bool(known.all()):
        bad = sorted(set(quality[~known].tolist()))[:5]
        valid = "codes >= 0" if quality_codes is None else f"codes {sorted(quality_codes)}"
        raise ValueError(f"quality holds unknown code(s) {bad}; valid {valid}")
    lq = torch.isin(quality, torch.tensor(sorted(low_quality), dtype=quality.dtype, device=quality.device))
    healthy = disease == 0
    return (healthy.long() * 2 + lq.long()).to(torch.long)
