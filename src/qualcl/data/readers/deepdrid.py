"""DeepDRiD reader (regular fundus set): per-eye DR grade, overall quality and the quality sub-scores.

Layout (GitHub ``deepdrdoc/DeepDRiD``)::

    regular_fundus_images/regular-fundus-training/{Images/<pid>/<pid>_l1.jpg, regular-fundus-training.csv}
    regular_fundus_images/regular-fundus-validation/{Images/…, regular-fundus-validation.csv}
    regular_fundus_images/Online-Challenge1&2-Evaluation/{Images/…, Challenge{1,2}_labels.xlsx}

The training and validation CSVs have the header ``patient_id,image_id,image_path,Overall quality,
left_eye_DR_Level,right_eye_DR_Level,patient_DR_Level,Clarity,Field definition,Artifact``; only the
column of the image's eye (``_l*`` / ``_r*``) is filled. The evaluation labels, released after the
challenge, are ``Challenge1_labels`` (``image_id, DR_Levels``) and ``Challenge2_labels``
(``image_id, Overall quality, Clarity, Field definition, Artifact``) as ``.xlsx`` (read here without
extra dependencies) or ``.csv``.

Quality: ``Overall quality`` 1 (good enough for diagnosis) → canonical 0 ``"good"``, 0 → 1
``"not good"`` (MKCNet writes ``IQ = Overall quality``). MKCNet's split is the official one:
training 1,200 / validation 400 / evaluation 400.

Reference:
    R. Liu et al., "DeepDRiD: Diabetic Retinopathy—Grading and Image Quality Estimation
    Challenge", Patterns 3(6), 2022.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree

from qualcl.data.readers._files import find_file, read_csv_rows, refuse_conflicts
from qualcl.data.readers.quality import ExtraValue, QualityLabelledRecord

__all__ = ["DEEPDRID_SCORES", "read_deepdrid"]

#: DeepDRiD's quality sub-scores, kept in :attr:`QualityLabelledRecord.extra`.
DEEPDRID_SCORES = ("Clarity", "Field definition", "Artifact")
_REGULAR = (
    "patient_id",
    "image_id",
    "image_path",
    "Overall quality",
    "left_eye_DR_Level",
    "right_eye_DR_Level",
    "patient_DR_Level",
    *DEEPDRID_SCORES,
)
_FOLDERS = {
    "train": "regular-fundus-training",
    "val": "regular-fundus-validation",
    "test": "Online-Challenge1&2-Evaluation",
}
_ALIASES = {"training": "train", "validation": "val", "evaluation": "test"}
_XLSX = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def _column_index(reference: str) -> int:
    index = 0
    for char in re.sub(r"\d", "", reference):
        index = index * 26 + ord(char.upper()) - ord("A") + 1
    return index - 1


def _read_xlsx_rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of the first sheet of an ``.xlsx`` as dicts keyed by stripped header names (stdlib only)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            shared: list[str] = []
            if "xl/sharedStrings.xml" in names:
                strings = ElementTree.fromstring(archive.read("xl/sharedStrings.xml"))
                shared = ["".join(t.text or "" for t in item.iter(f"{_XLSX}t")) for item in strings]
            sheets = sorted(n for n in names if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
            if not sheets:
                raise ValueError(f"{path} has no worksheet")
            sheet = ElementTree.fromstring(archive.read(sheets[0]))
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a valid .xlsx file") from None
    table: list[tuple[int, dict[int, str]]] = []
    for element in sheet.iter(f"{_XLSX}row"):
        cells: dict[int, str] = {}
        for position, cell in enumerate(element.iter(f"{_XLSX}c")):
            reference = cell.get("r")
            column = _column_index(reference) if reference else position
            kind = cell.get("t")
            value = cell.find(f"{_XLSX}v")
            if kind == "inlineStr":
                text = "".join(t.text or "" for t in cell.iter(f"{_XLSX}t"))
            elif value is None or value.text is None:
                text = ""
            elif kind == "s":
                text = shared[int(value.text)]
            else:
                text = value.text
            if re.fullmatch(r"-?\d+\.0+", text):  # numbers are stored as floats
                text = text.split(".")[0]
            cells[column] = text.strip()
        table.append((int(element.get("r", len(table) + 1)), cells))
    if not table:
        raise ValueError(f"{path} is empty: expected a header row")
    header_cells = table[0][1]
    header = {column: name for column, name in header_cells.items() if name}
    missing = [name for name in required if name not in header.values()]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; found columns {list(header.values())}")
    rows = []
    for line, cells in table[1:]:
        if not any(cells.values()):
            continue
        row = {name: cells.get(column, "") for column, name in header.items()}
        row["__line__"] = str(line)
        rows.append(row)
    return rows


def _read_table(folder: Path, stem: str, required: Sequence[str], what: str) -> tuple[Path, list[dict[str, str]]]:
    path = find_file(folder, [f"{stem}.csv", f"{stem}.xlsx"], what)
    rows = _read_xlsx_rows(path, required) if path.suffix == ".xlsx" else read_csv_rows(path, required)
    return path, rows


def _int(row: dict[str, str], column: str, where: str, allowed: Sequence[int]) -> int:
    text = row.get(column, "")
    if re.fullmatch(r"-?\d+(\.0*)?", text) is None:
        raise ValueError(f"{where}: {column!r} must be an integer in {list(allowed)}, got {text!r}")
    value = int(float(text))
    if value not in allowed:
        raise ValueError(f"{where}: {column!r} must be one of {list(allowed)}, got {value}")
    return value


def _scores(row: dict[str, str], where: str) -> dict[str, ExtraValue]:
    extra: dict[str, ExtraValue] = {}
    for column in DEEPDRID_SCORES:
        if row.get(column, "") != "":
            extra[column] = _int(row, column, where, range(11))
    return extra


def _image(folder: Path, image_id: str, image_path: str, check_files: bool, where: str) -> Path:
    parts = [p for p in re.split(r"[\\/]", image_path) if p]
    name = parts[-1] if parts else image_id + ".jpg"
    patient = image_id.split("_")[0]
    candidates = [
        folder / "Images" / patient / name,
        folder / "Images" / name,
        folder / patient / name,
        folder.parent / Path(*parts) if parts else folder / name,
    ]
    for path in candidates:
        if path.is_file():
            return path
    if check_files:
        raise FileNotFoundError(f"{where}: image {name!r} not found; looked in {[str(p) for p in candidates[:3]]}")
    return candidates[0]


def _eye(image_id: str, where: str) -> str:
    match = re.search(r"_([lr])\d*$", image_id)
    if match is None:
        raise ValueError(f"{where}: image_id {image_id!r} should end in _l<n> or _r<n> (the eye)")
    return "left" if match.group(1) == "l" else "right"


def read_deepdrid(root: str | Path, split: str = "train", *, check_files: bool = True) -> list[QualityLabelledRecord]:
    """Read a split of DeepDRiD's regular fundus set as canonical quality-labelled records.

    ``diagnosis`` is the image's own eye's DR level (0–4, ``left_eye_DR_Level`` for ``_l*``,
    ``right_eye_DR_Level`` for ``_r*``; ``DR_Levels`` in the evaluation labels); ``quality`` is 0
    ("good") for ``Overall quality`` 1 and 1 ("not good") for 0. ``extra`` holds ``eye``,
    ``Clarity``, ``Field definition`` and ``Artifact`` (when filled) and ``patient_DR_Level``.
    ``image_path`` (Windows backslashes, without the ``Images`` folder) is resolved to
    ``<split folder>/Images/<patient>/<image>``.

    Args:
        root: The DeepDRiD repository folder (holding ``regular_fundus_images``) or
            ``regular_fundus_images`` itself.
        split: ``"train"``, ``"val"`` or ``"test"`` (the Online-Challenge evaluation set, which needs
            its released labels); ``"training"``, ``"validation"`` and ``"evaluation"`` are aliases.
        check_files: Fail if an image is missing (otherwise keep the expected path).

    Returns:
        One record per labelled image, in file order, with ``dataset="deepdrid"``.

    Raises:
        FileNotFoundError: The split folder, a label file or an image is missing (named).
        ValueError: Unknown split, a missing column, or a bad value (file and line named).

    Examples:
        >>> records = read_deepdrid("DeepDRiD", "train")  # doctest: +SKIP
        >>> len(records), records[0].quality_name, records[0].extra["Clarity"]  # doctest: +SKIP
        (1200, 'not good', 10)

    Reference:
        Liu et al., "DeepDRiD: Diabetic Retinopathy—Grading and Image Quality Estimation Challenge",
        Patterns 2022.
    """
    split = _ALIASES.get(split, split)
    if split not in _FOLDERS:
        raise ValueError(f"split must be one of {sorted(_FOLDERS)} (or {sorted(_ALIASES)}), got {split!r}")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"DeepDRiD: dataset folder {base} does not exist")
    regular = base / "regular_fundus_images"
    parent = regular if regular.is_dir() else base
    folder = parent / _FOLDERS[split]
    if not folder.is_dir():
        raise FileNotFoundError(f"DeepDRiD {split}: folder {folder} does not exist")
    if split == "test":
        return _read_evaluation(folder, check_files)
    labels = find_file(folder, [f"{_FOLDERS[split]}.csv"], f"DeepDRiD {split} labels")
    records, wheres = [], []
    for row in read_csv_rows(labels, _REGULAR):
        where = f"{labels}:{row['__line__']}"
        wheres.append(where)
        eye = _eye(row["image_id"], where)
        grade = _int(row, f"{eye}_eye_DR_Level", where, range(5))
        overall = _int(row, "Overall quality", where, (0, 1))
        extra: dict[str, ExtraValue] = {"eye": eye, **_scores(row, where)}
        if row["patient_DR_Level"] != "":
            extra["patient_DR_Level"] = _int(row, "patient_DR_Level", where, range(5))
        records.append(
            QualityLabelledRecord(
                image=_image(folder, row["image_id"], row["image_path"], check_files, where),
                diagnosis=grade,
                quality=1 - overall,
                patient_id=row["patient_id"] or row["image_id"].split("_")[0],
                source="deepdrid",
                dataset="deepdrid",
                extra=extra,
            )
        )
    _refuse_conflicts(records, wheres)
    return records


def _refuse_conflicts(records: Sequence[QualityLabelledRecord], wheres: Sequence[str]) -> None:
    labels = ((r.image, (r.diagnosis, r.quality), w) for r, w in zip(records, wheres, strict=True))
    refuse_conflicts(labels, "(DR level, overall quality)")


def _read_evaluation(folder: Path, check_files: bool) -> list[QualityLabelledRecord]:
    what = "DeepDRiD evaluation labels (released after the challenge; Challenge*_upload.csv has none)"
    grades_path, grades = _read_table(folder, "Challenge1_labels", ("image_id", "DR_Levels"), what)
    scores_path, scores = _read_table(folder, "Challenge2_labels", ("image_id", "Overall quality"), what)
    by_id: dict[str, dict[str, str]] = {}
    for row in scores:
        first = by_id.setdefault(row["image_id"], row)
        if first["Overall quality"] != row["Overall quality"]:
            raise ValueError(
                f"{scores_path}:{row['__line__']}: image_id {row['image_id']!r} is listed twice with different "
                f"Overall quality: {first['Overall quality']!r} at line {first['__line__']} and "
                f"{row['Overall quality']!r} here"
            )
    records, wheres = [], []
    for row in grades:
        where = f"{grades_path}:{row['__line__']}"
        wheres.append(where)
        image_id = row["image_id"]
        quality_row = by_id.get(image_id)
        if quality_row is None:
            raise ValueError(f"{where}: image_id {image_id!r} has no row in {scores_path}")
        quality_where = f"{scores_path}:{quality_row['__line__']}"
        eye = _eye(image_id, where)
        records.append(
            QualityLabelledRecord(
                image=_image(folder, image_id, "", check_files, where),
                diagnosis=_int(row, "DR_Levels", where, range(5)),
                quality=1 - _int(quality_row, "Overall quality", quality_where, (0, 1)),
                patient_id=image_id.split("_")[0],
                source="deepdrid",
                dataset="deepdrid",
                extra={"eye": eye, **_scores(quality_row, quality_where)},
            )
        )
    _refuse_conflicts(records, wheres)
    return records
