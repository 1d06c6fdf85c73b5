"""EyeQ reader: ``Label_EyeQ_{train,test}.csv`` (``,image,quality,DR_grade``) + EyePACS images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qualcl.data.readers._files import find_file, int_cell, read_csv_rows, refuse_conflicts, resolve_image

__all__ = ["EYEQ_QUALITY", "FundusRecord", "read_eyeq"]

#: EyeQ's quality codes, best first (Fu et al., MICCAI 2019).
EYEQ_QUALITY = ("Good", "Usable", "Reject")


@dataclass(frozen=True)
class FundusRecord:
    """One labelled fundus photograph.

    Attributes:
        image: Path of the image file.
        dr_grade: Diabetic-retinopathy grade 0–4 (ICDR).
        quality: Quality code, 0 = Good, 1 = Usable, 2 = Reject (EyeQ order; 0 is best).
        patient_id: Patient identifier (EyePACS: the number before ``_left``/``_right``).
        eye: ``"left"``, ``"right"`` or ``None`` when the name does not say.
    """

    image: Path
    dr_grade: int
    quality: int
    patient_id: str
    eye: str | None


def _patient_and_eye(name: str) -> tuple[str, str | None]:
    stem = Path(name).stem
    for eye in ("left", "right"):
        if stem.endswith("_" + eye):
            return stem[: -len(eye) - 1], eye
    return stem, None


def read_eyeq(
    root: str | Path,
    split: str = "train",
    *,
    image_dir: str | Path | None = None,
    check_files: bool = True,
) -> list[FundusRecord]:
    """Read an EyeQ split.

    The label file is ``Label_EyeQ_{split}.csv`` in ``root`` or ``root/data`` (the layout of the
    ``HzFu/EyeQ`` repository); its header is ``,image,quality,DR_grade`` (the first column an
    unnamed index). Images are looked up in ``image_dir`` (default: ``root/images``,
    ``root/{split}``, ``root``) under their listed name, or their stem with ``.png`` (EyeQ's
    pre-processed 800×800 crops), ``.jpeg`` or ``.jpg``.

    Args:
        root: Dataset folder.
        split: ``"train"`` or ``"test"``.
        image_dir: Folder holding the images, if not one of the defaults.
        check_files: Fail if an image is missing (otherwise keep the path as listed).

    Returns:
        One :class:`FundusRecord` per CSV row, in file order.

    Raises:
        FileNotFoundError: The folder, the label file or an image is missing (named).
        ValueError: A column is missing, a value is not an integer in range, or one image is listed
            with two labels (file and lines named).

    Examples:
        >>> records = read_eyeq("EyeQ", "train")  # doctest: +SKIP
        >>> records[0].quality, records[0].dr_grade  # doctest: +SKIP
        (0, 0)

    Reference:
        Fu et al., "Evaluation of Retinal Image Quality Assessment Networks in Different
        Color-spaces", MICCAI 2019.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = Path(root)
    label_name = f"Label_EyeQ_{split}.csv"
    labels = find_file(base, [label_name, f"data/{label_name}"], "EyeQ labels")
    rows = read_csv_rows(labels, ["image", "quality", "DR_grade"])
    folders = [Path(image_dir)] if image_dir is not None else [base / "images", base / split, base]
    records, wheres = [], []
    for row in rows:
        where = f"{labels}:{row['__line__']}"
        quality = int_cell(row, "quality", where, (0, 1, 2))  # 0 Good, 1 Usable, 2 Reject
        grade = int_cell(row, "DR_grade", where, range(5))
        path = resolve_image(folders, row["image"], (".png", ".jpeg", ".jpg"))
        if path is None:
            if check_files:
                tried = ", ".join(str(f) for f in folders)
                raise FileNotFoundError(f"{where}: image {row['image']!r} not found in {tried}")
            path = folders[0] / row["image"]
        patient, eye = _patient_and_eye(row["image"])
        records.append(FundusRecord(path, grade, quality, patient, eye))
        wheres.append(where)
    labels_of = ((r.image, (r.quality, r.dr_grade), w) for r, w in zip(records, wheres, strict=True))
    refuse_conflicts(labels_of, "(quality, DR_grade)")
    return records
