"""NIH ChestX-ray14 reader: ``Data_Entry_2017*.csv`` and the official patient-level split lists."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from qualcl.data.readers._files import find_file, read_text

__all__ = [
    "CHESTXRAY8_FINDINGS",
    "NIH_FINDINGS",
    "CXRRecord",
    "findings_to_multi_hot",
    "read_nih_boxes",
    "read_nih_cxr14",
]

#: The 14 findings of ChestX-ray14 (``No Finding`` is the empty set).
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
#: The eight findings of ChestX-ray8 (the first release), which also carry ``BBox_List_2017.csv`` boxes.
CHESTXRAY8_FINDINGS = NIH_FINDINGS[:8]
_REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position")


@dataclass(frozen=True)
class CXRRecord:
    """One chest radiograph.

    Attributes:
        image: Path of the PNG.
        findings: Findings from ``NIH_FINDINGS`` (empty for ``No Finding``).
        patient_id: Patient identifier.
        age: Age in years, or ``None`` when missing or implausible (> 120).
        sex: ``"M"`` or ``"F"``.
        view: ``"PA"`` or ``"AP"``.
    """

    image: Path
    findings: tuple[str, ...]
    patient_id: str
    age: int | None
    sex: str
    view: str


def _age(text: str) -> int | None:
    match = re.fullmatch(r"0*(\d+)\s*[Yy]?", text.strip())
    if match is None:
        return None
    value = int(match.group(1))
    return value if value <= 120 else None


def findings_to_multi_hot(records: list[CXRRecord]) -> Tensor:
    """``(N, 14)`` float multi-hot labels in ``NIH_FINDINGS`` order."""
    index = {name: i for i, name in enumerate(NIH_FINDINGS)}
    out = torch.zeros(len(records), len(NIH_FINDINGS))
    for row, record in enumerate(records):
        for name in record.findings:
            out[row, index[name]] = 1.0
    return out


def _image_index(root: Path) -> dict[str, Path]:
    flat = root / "images"
    if flat.is_dir():
        return {p.name: p for p in flat.iterdir()}
    return {p.name: p for p in root.glob("images_*/images/*.png")}


def read_nih_cxr14(root: str | Path, split: str | None = None, *, check_files: bool = True) -> list[CXRRecord]:
    """Read ChestX-ray14 metadata (and check the images) for the whole set or an official split.

    Accepts ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv``. The bracketed header names
    (``OriginalImage[Width,Height]``) are ignored, as is the trailing empty column of the 2017
    file; ages such as ``"058Y"`` are parsed, implausible ones (> 120) become ``None``. Images are
    looked up in ``root/images`` or in the distributed ``images_001/images`` … folders.

    Args:
        root: Dataset folder.
        split: ``None`` (all rows), ``"train_val"`` or ``"test"`` (``train_val_list.txt`` /
            ``test_list.txt``, split by patient).
        check_files: Fail if an image is missing.

    Returns:
        Records in CSV order.

    Raises:
        FileNotFoundError: The CSV, a split list or an image is missing (named).
        ValueError: A column is missing or a finding is unknown (line named).

    Examples:
        >>> records = read_nih_cxr14("NIH", "test")  # doctest: +SKIP
        >>> findings_to_multi_hot(records).shape  # doctest: +SKIP
        torch.Size([25596, 14])

    Reference:
        Wang et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks", CVPR 2017.
    """
    base = Path(root)
    table = find_file(base, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"], "NIH ChestX-ray14 metadata")
    wanted: set[str] | None = None
    if split is not None:
        lists = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
        if split not in lists:
            raise ValueError(f"split must be None, 'train_val' or 'test', got {split!r}")
        listing = find_file(base, [lists[split]], "NIH ChestX-ray14 split list")
        wanted = {line.strip() for line in read_text(listing).splitlines() if line.strip()}
    images = _image_index(base) if check_files else {}
    known = set(NIH_FINDINGS)
    records = []
    reader = csv.reader(io.StringIO(read_text(table), newline=""))
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in _REQUIRED if name not in header]
    if missing:
        raise ValueError(f"{table} lacks column(s) {missing}; found columns {header}")
    col = {name: header.index(name) for name in _REQUIRED}
    for line, values in enumerate(reader, start=2):
        if not values or not values[0].strip():
            continue
        name = values[col["Image Index"]].strip()
        if wanted is not None and name not in wanted:
            continue
        labels = values[col["Finding Labels"]].strip()
        findings = () if labels in ("", "No Finding") else tuple(labels.split("|"))
        unknown = [f for f in findings if f not in known]
        if unknown:
            raise ValueError(f"{table}:{line}: unknown finding(s) {unknown}")
        if check_files and name not in images:
            raise FileNotFoundError(f"{table}:{line}: image {name!r} not found under {base}")
        records.append(
            CXRRecord(
                image=images.get(name, base / "images" / name),
                findings=findings,
                patient_id=values[col["Patient ID"]].strip(),
                age=_age(values[col["Patient Age"]]),
                sex=values[col["Patient Gender"]].strip(),
                view=values[col["View Position"]].strip(),
            )
        )
    return records


def read_nih_boxes(root: str | Path) -> dict[str, list[tuple[float, float, float, float, str]]]:
    """Read ``BBox_List_2017.csv``: the radiologists' boxes of 984 findings on 880 images.

    The file's header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (the bracketed name spans
    four columns), so values are read by position: name, label, then ``x, y, w, h`` in original
    image pixels. Labels are kept as written (the file spells ``Infiltrate`` where the metadata
    says ``Infiltration``).

    Args:
        root: Dataset folder holding ``BBox_List_2017.csv``.

    Returns:
        ``{image name: [(x1, y1, x2, y2, label), ...]}`` with ``x2 = x + w``, ``y2 = y + h``.

    Raises:
        FileNotFoundError: The CSV is missing (named).
        ValueError: A row has fewer than six values or a non-numeric / negative-size box (line named).

    Examples:
        >>> boxes = read_nih_boxes("NIH")  # doctest: +SKIP
        >>> boxes["00013118_008.png"]  # doctest: +SKIP
        [(225.08, 547.02, 311.86, 626.21, 'Atelectasis')]
    """
    table = find_file(Path(root), ["BBox_List_2017.csv"], "NIH ChestX-ray14 boxes")
    out: dict[str, list[tuple[float, float, float, float, str]]] = {}
    reader = csv.reader(io.StringIO(read_text(table), newline=""))
    header = next(reader, [])
    if not header or header[0].strip() != "Image Index":
        raise ValueError(f"{table}: expected the header 'Image Index,Finding Label,Bbox [x,y,w,h]', got {header}")
    for line, values in enumerate(reader, start=2):
        if not values or not values[0].strip():
            continue
        if len(values) < 6:
            raise ValueError(f"{table}:{line}: expected image, label, x, y, w, h; got {values}")
        try:
            x, y, w, h = (float(v) for v in values[2:6])
        except ValueError:
            raise ValueError(f"{table}:{line}: box values {values[2:6]} are not numbers") from None
        if w < 0 or h < 0:
            raise ValueError(f"{table}:{line}: negative box size {w} x {h}")
        out.setdefault(values[0].strip(), []).append((x, y, x + w, y + h, values[1].strip()))
    return out
