"""Kaggle EyePACS (diabetic-retinopathy detection) reader and the public FundusDR split."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from qualcl.data.readers._files import find_file, int_cell, read_csv_rows, refuse_conflicts, resolve_image

__all__ = ["EyePACSRecord", "fundusdr_split", "read_eyepacs", "shuffle_split"]

T = TypeVar("T")

#: Label files tried in ``root``: Kaggle's, and the "resized_train_cropped" version's.
LABEL_FILES = ("trainLabels.csv", "trainLabels_cropped.csv")


@dataclass(frozen=True)
class EyePACSRecord:
    """One graded EyePACS photograph.

    Attributes:
        image: Path of the image file.
        dr_grade: DR grade 0–4 (Kaggle's ``level``).
        patient_id: The number before ``_left`` / ``_right``.
        eye: ``"left"``, ``"right"`` or ``None``.
    """

    image: Path
    dr_grade: int
    patient_id: str
    eye: str | None


def read_eyepacs(
    root: str | Path,
    *,
    labels_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    check_files: bool = True,
) -> list[EyePACSRecord]:
    """Read Kaggle EyePACS' ``trainLabels.csv`` (``image,level``) and find its images.

    ``trainLabels_cropped.csv`` (the "resized_train_cropped" Kaggle set the public FundusDR code
    uses; extra unnamed index columns are ignored) is accepted too. Images are looked up by name
    with ``.jpeg``, ``.jpg`` or ``.png`` in ``image_dir`` (default: ``root/train``,
    ``root/resized_train_cropped``, ``root/resized_train``, ``root``).

    Args:
        root: Dataset folder.
        labels_file: The label CSV, if not one of :data:`LABEL_FILES` in ``root``.
        image_dir: Folder holding the images.
        check_files: Fail if an image is missing (otherwise keep the path as ``image_dir/name.jpeg``).

    Returns:
        One :class:`EyePACSRecord` per row, in file order.

    Raises:
        FileNotFoundError: The folder, the label file or an image is missing (named).
        ValueError: A column is missing, a grade is not an integer in 0..4, or one image is listed
            with two grades (file and lines named).

    Examples:
        >>> records = read_eyepacs("EyePACS")  # doctest: +SKIP
        >>> records[0].dr_grade, records[0].eye  # doctest: +SKIP
        (0, 'left')

    Reference:
        Kaggle, "Diabetic Retinopathy Detection" (EyePACS), 2015.
    """
    base = Path(root)
    labels = Path(labels_file) if labels_file is not None else find_file(base, LABEL_FILES, "EyePACS labels")
    if not labels.is_file():
        raise FileNotFoundError(f"EyePACS labels {labels} do not exist")
    rows = read_csv_rows(labels, ["image", "level"])
    if image_dir is not None:
        folders = [Path(image_dir)]
    else:
        folders = [base / "train", base / "resized_train_cropped", base / "resized_train", base]
    records, wheres = [], []
    for row in rows:
        where = f"{labels}:{row['__line__']}"
        grade = int_cell(row, "level", where, range(5))
        name = row["image"]
        path = resolve_image(folders, name, (".jpeg", ".jpg", ".png"))
        if path is None:
            if check_files:
                tried = ", ".join(str(f) for f in folders)
                raise FileNotFoundError(f"{where}: image {name!r} not found in {tried}")
            path = folders[0] / f"{name}.jpeg"
        stem = Path(name).stem
        patient, eye = stem, None
        for side in ("left", "right"):
            if stem.endswith("_" + side):
                patient, eye = stem[: -len(side) - 1], side
        records.append(EyePACSRecord(path, grade, patient, eye))
        wheres.append(where)
    refuse_conflicts(((r.image, r.dr_grade, w) for r, w in zip(records, wheres, strict=True)), "levels")
    return records


def shuffle_split(items: Sequence[T], test_size: float, seed: int) -> tuple[list[T], list[T]]:
    """``(train, test)`` exactly as scikit-learn's ``train_test_split(items, test_size=..., random_state=seed)``.

    ``n_test = ceil(test_size · n)``; the permutation is ``numpy.random.RandomState(seed).permutation(n)``:
    its first ``n_test`` positions are the test items, the rest the training items, both in
    permutation order (scikit-learn's ``ShuffleSplit``), without depending on scikit-learn.

    Examples:
        >>> shuffle_split(list(range(10)), 0.2, seed=11)[1]
        [7, 8]
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must lie in (0, 1), got {test_size}")
    n = len(items)
    n_test = math.ceil(test_size * n)
    if n_test == 0 or n_test >= n:
        raise ValueError(f"test_size={test_size} of {n} items leaves an empty split")
    order = np.random.RandomState(seed).permutation(n)
    return [items[i] for i in order[n_test:]], [items[i] for i in order[:n_test]]


def fundusdr_split(
    records: Sequence[EyePACSRecord],
    *,
    test_size: float = 0.2,
    val_size: float = 0.1,
    test_seed: int = 11,
    val_seed: int = 22,
    by_patient: bool = False,
) -> tuple[list[EyePACSRecord], list[EyePACSRecord], list[EyePACSRecord]]:
    """``(train, val, test)`` as the public FundusDR code splits EyePACS (``datasets/KaggleDR.py``).

    The code calls ``train_test_split(images, test_size=0.2, random_state=11)``, then splits the
    training part again with ``test_size=0.1, random_state=22`` (25,277 / 2,809 / 7,022 lines of
    its label file). That split is per image: the two eyes of a patient (near-duplicates in grade
    and appearance) can land in the database and among the queries. ``by_patient=True`` runs the
    same procedure over the sorted patient ids and expands each split to its patients' images
    (file order), so no patient is on both sides.

    Examples:
        >>> from pathlib import Path
        >>> records = [EyePACSRecord(Path(f"{i}.jpeg"), i % 5, str(i // 2), None) for i in range(20)]
        >>> train, val, test = fundusdr_split(records)
        >>> len(train), len(val), len(test)
        (14, 2, 4)
    """
    if not by_patient:
        rest, test = shuffle_split(records, test_size, test_seed)
        train, val = shuffle_split(rest, val_size, val_seed)
        return train, val, test
    patients = sorted({r.patient_id for r in records})
    rest_p, test_p = shuffle_split(patients, test_size, test_seed)
    train_p, val_p = shuffle_split(rest_p, val_size, val_seed)
    sides = {p: 0 for p in train_p} | {p: 1 for p in val_p} | {p: 2 for p in test_p}
    parts: tuple[list[EyePACSRecord], list[EyePACSRecord], list[EyePACSRecord]] = ([], [], [])
    for record in records:
        parts[sides[record.patient_id]].append(record)
    return parts
