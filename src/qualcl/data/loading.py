"""Read fundus image records into an :class:`~qualcl.data.ImageTable`: resized in memory, boxes rescaled."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from qualcl.data.images import open_image
from qualcl.data.table import ImageTable

__all__ = [
    "FUNDUS_QUALITY",
    "UNRATED",
    "FundusLike",
    "ImageProgress",
    "load_fundus_table",
    "patient_split",
    "read_resized",
]

#: EyeQ's quality levels, best first: the strata of every fundus recipe's per-quality metrics.
FUNDUS_QUALITY = ("Good", "Usable", "Reject")
#: The one quality stratum of a dataset without quality labels (Kaggle EyePACS, APTOS, the vessel sets).
UNRATED: tuple[str, ...] = ("unrated",)
#: A wrapper around the iteration over image files (a progress bar), or ``None``.
ImageProgress = Callable[[Sequence[Path]], Sequence[Path]] | None


class FundusLike(Protocol):
    """What :func:`load_fundus_table` reads from a record (EyeQ's, EyePACS', the synthetic set's)."""

    @property
    def image(self) -> Path:
        """Image file."""

    @property
    def dr_grade(self) -> int:
        """DR grade 0–4."""

    @property
    def patient_id(self) -> str:
        """Patient identifier."""

    @property
    def eye(self) -> str | None:
        """``"left"`` / ``"right"`` or ``None``."""


def read_resized(
    paths: Sequence[Path],
    size: int,
    boxes: Sequence[Tensor] | None = None,
    progress: Callable[[Sequence[Path]], Sequence[Path]] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """``(N, 3, size, size)`` uint8 RGB images (bilinear resize) and their boxes rescaled from original pixels.

    Args:
        paths: Image files.
        size: Output side (images are resized to a square, as the recipes' papers do).
        boxes: Per-image ``(K, 4)`` boxes ``(x1, y1, x2, y2)`` in original pixels, or ``None``.
        progress: Optional wrapper (e.g. ``tqdm``) around the iteration over ``paths``.

    Returns:
        The image stack and, per image, its boxes in output pixels (floored / ceiled outwards).
    """
    images, scaled = [], []
    iterator = progress(paths) if progress is not None else paths
    for i, path in enumerate(iterator):
        rgb = open_image(path, "RGB")
        w, h = rgb.size
        if (w, h) != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        images.append(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
        raw = boxes[i] if boxes is not None else torch.zeros(0, 4)
        factor = torch.tensor([size / w, size / h, size / w, size / h])
        box = raw.to(torch.float64) * factor
        scaled.append(torch.cat([box[:, :2].floor(), box[:, 2:].ceil()], dim=1).to(torch.long))
    stack = torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return stack, scaled


def load_fundus_table(
    records: Sequence[FundusLike],
    size: int,
    boxes: Sequence[Tensor] | None = None,
    progress: Callable[[Sequence[Path]], Sequence[Path]] | None = None,
    *,
    quality: Sequence[int] | None = None,
    quality_names: tuple[str, ...] = FUNDUS_QUALITY,
) -> ImageTable:
    """Read and resize fundus ``records`` into an :class:`~qualcl.data.ImageTable`; ``boxes`` get rescaled.

    Args:
        records: Image records (e.g. from :func:`qualcl.data.readers.read_eyeq`).
        size: Output side.
        boxes: Per-record lesion boxes in the original image's pixels, or ``None``.
        progress: Optional wrapper (e.g. ``tqdm``) around the iteration over image paths.
        quality: Quality index per record (default: each record's ``quality`` attribute; a record
            without one is level 0 of ``quality_names``).
        quality_names: Names of the quality levels, best first.

    Returns:
        The table (label = DR grade, ``label_names`` ``"0"``…``"4"``, field of view from the image).

    Examples:
        >>> table = load_fundus_table(read_eyeq("EyeQ", "test"), 64)  # doctest: +SKIP
    """
    stack, scaled = read_resized([r.image for r in records], size, boxes, progress)
    if quality is None:
        quality = [int(getattr(r, "quality", 0)) for r in records]
    return ImageTable(
        images=stack,
        label=torch.tensor([r.dr_grade for r in records], dtype=torch.long),
        quality=torch.tensor(list(quality), dtype=torch.long),
        quality_names=quality_names,
        label_names=tuple(str(g) for g in range(5)),
        path=[str(r.image) for r in records],
        patient=[r.patient_id for r in records],
        eye=[r.eye or "" for r in records],
        boxes=scaled,
        fov=stack.amax(dim=1) > 12,
    )


def patient_split(patients: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split row indices into ``(keep, held_out)`` with ``fraction`` of the *patients* held out.

    Both eyes (every image) of a patient land on the same side. The held-out patients are the
    first ``round(fraction · P)`` of a seeded permutation of the sorted patient ids.

    Examples:
        >>> keep, held = patient_split(["a", "a", "b", "c"], 0.34, seed=0)
        >>> sorted(keep + held), len(held) in (1, 2)
        ([0, 1, 2, 3], True)
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction}")
    unique = sorted(set(patients))
    order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {unique[i] for i in order[: round(fraction * len(unique))]}
    keep = [i for i, p in enumerate(patients) if p not in held]
    out = [i for i, p in enumerate(patients) if p in held]
    return keep, out
