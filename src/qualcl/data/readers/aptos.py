"""APTOS 2019 Blindness Detection reader: ``train.csv`` (``id_code,diagnosis``) + ``train_images/{id_code}.png``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qualcl.data.readers._files import find_file, int_cell, read_csv_rows, refuse_conflicts, resolve_image

__all__ = ["APTOS_GRADES", "AptosRecord", "read_aptos"]

#: APTOS' ``diagnosis`` values, 0–4 (ICDR).
APTOS_GRADES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative DR")


@dataclass(frozen=True)
class AptosRecord:
    """One graded APTOS photograph.

    Attributes:
        image: Path of the image file.
        dr_grade: ``diagnosis``, 0–4.
        patient_id: The ``id_code`` (APTOS does not link images of one patient).
        eye: Always ``None`` (not recorded).
    """

    image: Path
    dr_grade: int
    patient_id: str
    eye: str | None = None


def read_aptos(root: str | Path, *, image_dir: str | Path | None = None, check_files: bool = True) -> list[AptosRecord]:
    """Read APTOS 2019's labelled ``train.csv`` and find its images.

    Images are ``{id_code}.png`` (or ``.jpg`` / ``.jpeg``) in ``image_dir`` (default:
    ``root/train_images``, ``root/train``, ``root``). The unlabelled ``test.csv`` is not read.

    Args:
        root: Dataset folder holding ``train.csv``.
        image_dir: Folder holding the images, if not one of the defaults.
        check_files: Fail if an image is missing.

    Returns:
        One :class:`AptosRecord` per row, in file order.

    Raises:
        FileNotFoundError: The folder, ``train.csv`` or an image is missing (named).
        ValueError: A column is missing, ``diagnosis`` is not an integer in 0..4, or one image is
            listed with two diagnoses (file and lines named).

    Examples:
        >>> records = read_aptos("aptos2019-blindness-detection")  # doctest: +SKIP
        >>> records[0].dr_grade  # doctest: +SKIP
        2

    Reference:
        Asia Pacific Tele-Ophthalmology Society, "APTOS 2019 Blindness Detection", Kaggle, 2019.
    """
    base = Path(root)
    labels = find_file(base, ("train.csv",), "APTOS 2019 labels")
    rows = read_csv_rows(labels, ["id_code", "diagnosis"])
    folders = [Path(image_dir)] if image_dir is not None else [base / "train_images", base / "train", base]
    records, wheres = [], []
    for row in rows:
        where = f"{labels}:{row['__line__']}"
        grade = int_cell(row, "diagnosis", where, range(5))
        code = row["id_code"]
        if not code:
            raise ValueError(f"{where}: id_code is empty")
        path = resolve_image(folders, code + ".png", (".jpg", ".jpeg"))
        if path is None:
            if check_files:
                raise FileNotFoundError(f"{where}: image {code}.png not found in {', '.join(map(str, folders))}")
            path = folders[0] / f"{code}.png"
        records.append(AptosRecord(path, grade, code))
        wheres.append(where)
    refuse_conflicts(((r.image, r.dr_grade, w) for r, w in zip(records, wheres, strict=True)), "diagnoses")
    return records
