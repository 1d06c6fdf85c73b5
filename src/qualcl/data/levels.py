"""CoMCL's four levels from disease and quality labels, with each dataset's quality mapping."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

__all__ = ["LEVEL_NAMES", "LOW_QUALITY", "split_levels"]

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


def split_levels(disease: Tensor, quality: Tensor, low_quality: Collection[int] | str = "eyeq") -> Tensor:
    """Level id (0 ``L``, 1 ``LQ_L``, 2 ``H``, 3 ``LQ_H``) of each image.

    "Lesion" means disease label > 0 (DR grade ≥ 1), "healthy" grade 0; "LQ" means a quality code
    in ``low_quality``.

    Args:
        disease: ``(N,)`` integer disease labels (0 = healthy).
        quality: ``(N,)`` integer quality codes.
        low_quality: The codes that are low quality, or a dataset name in ``LOW_QUALITY``.

    Returns:
        ``(N,)`` long level ids indexing ``LEVEL_NAMES``.

    Example:
        >>> import torch
        >>> split_levels(torch.tensor([2, 3, 0, 0]), torch.tensor([0, 2, 0, 1])).tolist()
        [0, 1, 2, 3]

    Reference:
        CoMCL (Hou et al., MICCAI 2024), Sec. 2.1.
    """
    if isinstance(low_quality, str):
        if low_quality not in LOW_QUALITY:
            raise ValueError(f"unknown dataset {low_quality!r} for low_quality; known: {sorted(LOW_QUALITY)}")
        low_quality = LOW_QUALITY[low_quality]
    if disease.shape != quality.shape or disease.ndim != 1:
        raise ValueError(
            f"disease and quality must be (N,) of equal length, got {tuple(disease.shape)} and {tuple(quality.shape)}"
        )
    lq = torch.isin(quality, torch.tensor(sorted(low_quality), dtype=quality.dtype, device=quality.device))
    healthy = disease == 0
    return (healthy.long() * 2 + lq.long()).to(torch.long)
