"""DRAC 2022 reader: DR-grading labels joined with image-quality labels by image name (UW-OCTA).

Layout (challenge download)::

    B. Image Quality Assessment/1. Original Images/a. Training Set/*.png
    B. Image Quality Assessment/2. Groundtruths/a. DRAC2022_ Image Quality Assessment_Training Labels.csv
    C. Diabetic Retinopathy Grading/1. Original Images/a. Training Set/*.png
    C. Diabetic Retinopathy Grading/2. Groundtruths/a. DRAC2022_ Diabetic Retinopathy Grading_Training Labels.csv

Note the space after ``DRAC2022_`` (a copy without it is accepted too). The CSV columns are
``image name`` (with ``.png``) and ``image quality level`` (0 poor, 1 good, 2 excellent) or
``DR grade`` (0 normal, 1 NPDR, 2 PDR). Images are greyscale 1024×1024 PNGs. Only the training
labels are public (test labels stay on the challenge server), so only ``split="train"`` exists.

Join (a decision, following MKCNet, which trains on images having both labels): an image is kept
when it appears in both CSVs; with ``on_unmatched="drop"`` (default) images with only one of the
two labels are dropped, with ``"error"`` they are reported. Canonical quality is best first:
2 → 0 "excellent", 1 → 1 "good", 0 → 2 "poor".

Reference:
    W. Qian et al., "DRAC 2022: A public benchmark for diabetic retinopathy analysis on
    ultra-wide optical coherence tomography angiography images", Patterns 2024 (MICCAI 2022
    challenge, drac22.grand-challenge.org).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from qualcl.data.readers._files import find_file, read_csv_rows, resolve_image
from qualcl.data.readers.quality import QualityLabelledRecord

__all__ = ["read_drac"]

_QUALITY_DIR = "B. Image Quality Assessment"
_GRADING_DIR = "C. Diabetic Retinopathy Grading"
_LABELS = "2. Groundtruths/a. DRAC2022_{sep}{task}_Training Labels.csv"
_IMAGES = "1. Original Images/a. Training Set"


def _labels(base: Path, folder: str, task: str, column: str) -> tuple[Path, dict[str, tuple[int, str]]]:
    """``image name`` → (value, ``file:line``) from one task's training CSV."""
    names = [_LABELS.format(sep=sep, task=task) for sep in (" ", "")]
    path = find_file(base / folder, names, f"DRAC 2022 {task} labels")
    out: dict[str, tuple[int, str]] = {}
    for row in read_csv_rows(path, ["image name", column]):
        where = f"{path}:{row['__line__']}"
        text = row[column]
        if re.fullmatch(r"[012](\.0*)?", text) is None:
            raise ValueError(f"{where}: {column!r} must be 0, 1 or 2, got {text!r}")
        value = int(float(text))
        name = row["image name"]
        if name in out:
            raise ValueError(f"{where}: image {name!r} is listed twice (first at {out[name][1]})")
        out[name] = (value, where)
    return path, out


def read_drac(
    root: str | Path,
    split: str = "train",
    *,
    on_unmatched: Literal["drop", "error"] = "drop",
    check_files: bool = True,
) -> list[QualityLabelledRecord]:
    """Read DRAC 2022's DR grades and image-quality levels, joined by image name.

    Args:
        root: The DRAC 2022 folder holding ``B. Image Quality Assessment`` and
            ``C. Diabetic Retinopathy Grading``.
        split: ``"train"`` (the only split with public labels).
        on_unmatched: What to do with images that have only a DR grade or only a quality level:
            ``"drop"`` them (MKCNet's choice) or raise an ``"error"`` listing them.
        check_files: Fail if an image is missing (otherwise keep the expected path). Images are
            looked up in the grading task's training folder, then the quality task's.

    Returns:
        One record per image with both labels, in the DR-grading CSV's order, ``dataset="drac"``,
        ``source="drac2022"``, ``patient_id=None`` (DRAC gives none) and ``extra`` holding
        ``"quality level"`` (the raw 0–2 level).

    Raises:
        FileNotFoundError: The folder, a label file or an image is missing (named).
        ValueError: Unknown split or ``on_unmatched``, a missing column, a bad or duplicated value
            (file and line named), or unmatched images with ``on_unmatched="error"``.

    Examples:
        >>> records = read_drac("DRAC2022")  # doctest: +SKIP
        >>> records[0].image.name, records[0].diagnosis_name, records[0].quality_name  # doctest: +SKIP
        ('001.png', 'normal', 'excellent')

    Reference:
        Qian et al., "DRAC 2022: A public benchmark for diabetic retinopathy analysis on ultra-wide
        optical coherence tomography angiography images", Patterns 2024.
    """
    if split != "train":
        raise ValueError(f"split must be 'train' (DRAC 2022 test labels are not public), got {split!r}")
    if on_unmatched not in ("drop", "error"):
        raise ValueError(f"on_unmatched must be 'drop' or 'error', got {on_unmatched!r}")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"DRAC 2022: dataset folder {base} does not exist")
    grading_path, grades = _labels(base, _GRADING_DIR, "Diabetic Retinopathy Grading", "DR grade")
    quality_path, levels = _labels(base, _QUALITY_DIR, "Image Quality Assessment", "image quality level")
    if on_unmatched == "error":
        only_grade = [name for name in grades if name not in levels]
        only_quality = [name for name in levels if name not in grades]
        if only_grade or only_quality:
            raise ValueError(
                f"DRAC 2022: {len(only_grade)} image(s) have a DR grade but no quality level in {quality_path} "
                f"(first: {only_grade[:5]}) and {len(only_quality)} have a quality level but no DR grade in "
                f"{grading_path} (first: {only_quality[:5]}); pass on_unmatched='drop' to keep only images with both"
            )
    folders = [base / _GRADING_DIR / _IMAGES, base / _QUALITY_DIR / _IMAGES]
    records = []
    for name, (grade, where) in grades.items():
        if name not in levels:
            continue
        path = resolve_image(folders, name, (".png",))
        if path is None:
            if check_files:
                raise FileNotFoundError(f"{where}: image {name!r} not found in {[str(f) for f in folders]}")
            path = folders[0] / name
        level = levels[name][0]
        records.append(
            QualityLabelledRecord(
                image=path,
                diagnosis=grade,
                quality=2 - level,
                patient_id=None,
                source="drac2022",
                dataset="drac",
                extra={"quality level": level},
            )
        )
    return records
