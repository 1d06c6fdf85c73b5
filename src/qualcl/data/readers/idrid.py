"""IDRiD reader: disease-grading CSVs and lesion segmentation masks (converted to boxes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from qualcl.data.images import read_image
from qualcl.data.readers._files import find_file, int_cell, read_csv_rows, refuse_conflicts, resolve_image

__all__ = [
    "IDRID_LESIONS",
    "IDRiDGradingRecord",
    "IDRiDSegmentationRecord",
    "load_mask",
    "mask_to_boxes",
    "read_idrid_grading",
    "read_idrid_segmentation",
]

#: IDRiD lesion codes with their ground-truth sub-folders (``A. Segmentation``).
IDRID_LESIONS = {
    "MA": "1. Microaneurysms",
    "HE": "2. Haemorrhages",
    "EX": "3. Hard Exudates",
    "SE": "4. Soft Exudates",
    "OD": "5. Optic Disc",
}
_SPLIT = {"train": ("a. Training Set", "Training"), "test": ("b. Testing Set", "Testing")}


@dataclass(frozen=True)
class IDRiDGradingRecord:
    """One image of IDRiD part B (disease grading).

    Attributes:
        image: Path of the ``IDRiD_NNN.jpg`` image.
        dr_grade: Retinopathy grade 0–4.
        dme_risk: Risk of macular edema 0–2.
    """

    image: Path
    dr_grade: int
    dme_risk: int


@dataclass(frozen=True)
class IDRiDSegmentationRecord:
    """One image of IDRiD part A (segmentation) with the masks it has.

    Attributes:
        image: Path of the ``IDRiD_NN.jpg`` image.
        masks: Lesion code (``MA``, ``HE``, ``EX``, ``SE``, ``OD``) → mask path; codes without a
            mask for this image (some lack SE or HE) are absent.
    """

    image: Path
    masks: dict[str, Path] = field(default_factory=dict)


def _check_split(split: str) -> tuple[str, str]:
    if split not in _SPLIT:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _SPLIT[split]


def read_idrid_grading(root: str | Path, split: str = "train", *, check_files: bool = True) -> list[IDRiDGradingRecord]:
    """Read IDRiD's disease-grading labels (``B. Disease Grading``).

    Column names are stripped (some copies have ``"Risk of macular edema "`` with a trailing
    space) and the empty trailing columns of the training CSV are ignored.

    Args:
        root: The IDRiD folder holding ``B. Disease Grading``.
        split: ``"train"`` or ``"test"``.
        check_files: Fail if an image is missing.

    Returns:
        One record per CSV row.

    Raises:
        FileNotFoundError: The CSV or an image is missing (named).
        ValueError: A column is missing, a value is not an integer in range, or one image is listed
            with two labels (file and lines named).

    Examples:
        >>> records = read_idrid_grading("IDRiD", "train")  # doctest: +SKIP

    Reference:
        Porwal et al., "IDRiD: Diabetic Retinopathy – Segmentation and Grading Challenge", 2020.
    """
    folder, word = _check_split(split)
    base = Path(root) / "B. Disease Grading"
    labels = find_file(
        base / "2. Groundtruths",
        [f"{'a' if split == 'train' else 'b'}. IDRiD_Disease Grading_{word} Labels.csv"],
        "IDRiD grading labels",
    )
    rows = read_csv_rows(labels, ["Image name", "Retinopathy grade", "Risk of macular edema"])
    images = base / "1. Original Images" / folder
    records, wheres = [], []
    for row in rows:
        where = f"{labels}:{row['__line__']}"
        grade = int_cell(row, "Retinopathy grade", where, range(5))
        dme = int_cell(row, "Risk of macular edema", where, range(3))
        path = resolve_image([images], row["Image name"], (".jpg", ".JPG", ".png"))
        if path is None:
            if check_files:
                raise FileNotFoundError(f"{where}: image {row['Image name']!r} not found in {images}")
            path = images / (row["Image name"] + ".jpg")
        records.append(IDRiDGradingRecord(path, grade, dme))
        wheres.append(where)
    labels_of = ((r.image, (r.dr_grade, r.dme_risk), w) for r, w in zip(records, wheres, strict=True))
    refuse_conflicts(labels_of, "(Retinopathy grade, Risk of macular edema)")
    return records


def read_idrid_segmentation(root: str | Path, split: str = "train") -> list[IDRiDSegmentationRecord]:
    """Read IDRiD's segmentation part (``A. Segmentation``): images and their lesion masks.

    Args:
        root: The IDRiD folder holding ``A. Segmentation``.
        split: ``"train"`` or ``"test"``.

    Returns:
        One record per image, sorted by name.

    Raises:
        FileNotFoundError: The image or ground-truth folder is missing, or holds no image.

    Examples:
        >>> records = read_idrid_segmentation("IDRiD")  # doctest: +SKIP
        >>> sorted(records[0].masks)  # doctest: +SKIP
        ['EX', 'HE', 'MA', 'OD', 'SE']
    """
    folder, _ = _check_split(split)
    base = Path(root) / "A. Segmentation"
    images = base / "1. Original Images" / folder
    truths = base / "2. All Segmentation Groundtruths" / folder
    for path, what in ((images, "image"), (truths, "ground-truth")):
        if not path.is_dir():
            raise FileNotFoundError(f"IDRiD segmentation: {what} folder {path} does not exist")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif"))
    if not files:
        raise FileNotFoundError(f"IDRiD segmentation: no images in {images}")
    records = []
    for image in files:
        masks = {}
        for code, sub in IDRID_LESIONS.items():
            for ext in (".tif", ".TIF", ".png"):
                candidate = truths / sub / f"{image.stem}_{code}{ext}"
                if candidate.is_file():
                    masks[code] = candidate
                    break
        records.append(IDRiDSegmentationRecord(image, masks))
    return records


def load_mask(path: str | Path) -> NDArray[np.bool_]:
    """Load a binary mask image (any non-zero channel value is foreground) as an ``(H, W)`` bool array."""
    array = np.asarray(read_image(path))
    foreground: NDArray[np.bool_] = np.asarray(array.any(axis=-1) if array.ndim == 3 else array > 0)
    return foreground


def mask_to_boxes(mask: NDArray[np.bool_], *, min_area: int = 1) -> list[tuple[int, int, int, int]]:
    """Bounding boxes ``(x1, y1, x2, y2)`` (inclusive-exclusive pixels) of a mask's connected parts.

    Parts are 8-connected, as the external contours of Lesion-based CL's ``mask2bbox.py``.

    Args:
        mask: ``(H, W)`` boolean mask.
        min_area: Drop parts with fewer pixels.

    Returns:
        Boxes sorted top-to-bottom, left-to-right.

    Examples:
        >>> import numpy as np
        >>> m = np.zeros((6, 6), bool); m[1:3, 1:3] = True; m[4, 5] = True
        >>> mask_to_boxes(m)
        [(1, 1, 3, 3), (5, 4, 6, 5)]
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    boxes = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        if int((labels[region] == index).sum()) < min_area:
            continue
        ys, xs = region
        boxes.append((int(xs.start), int(ys.start), int(xs.stop), int(ys.stop)))
    return sorted(boxes, key=lambda b: (b[1], b[0]))
