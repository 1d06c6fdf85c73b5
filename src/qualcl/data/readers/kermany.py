"""Reader of the Kermany paediatric chest X-ray pneumonia set (``chest_xray/{split}/{NORMAL,PNEUMONIA}``).

Layout (Mendeley ``rscbjbr9sj`` v2, Kaggle "chest-xray-pneumonia")::

    chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg

The label is the folder name; v3 has no ``val`` folder. Pneumonia files are
``personN_{bacteria,virus}_M.jpeg`` (patient ``personN``, subtype in the name); normal files are
``IM-xxxx-0001[-000k].jpeg`` or ``NORMAL2-IM-xxxx-0001.jpeg`` (patient ``IM-xxxx``; the ``NORMAL2-``
series prefix is dropped, so the two series may share an id — coarser groups never leak across a
patient-level split). Kaggle copies that hold a nested duplicate ``chest_xray/chest_xray`` and a
``__MACOSX`` folder are read from the outer ``chest_xray`` only; hidden files (``._*``) are skipped.

Reference:
    D. Kermany et al., "Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep
    Learning", Cell 172(5), 2018; data: Mendeley Data rscbjbr9sj (CC BY 4.0).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KERMANY_CLASSES", "KERMANY_SPLITS", "KermanyRecord", "read_kermany_pneumonia"]

#: Class folders, in label order (0 = NORMAL, 1 = PNEUMONIA).
KERMANY_CLASSES = ("NORMAL", "PNEUMONIA")
#: Split folders, in reading order.
KERMANY_SPLITS = ("train", "val", "test")
_EXTENSIONS = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class KermanyRecord:
    """One paediatric chest radiograph.

    Attributes:
        image: Path of the image file.
        label: 0 = NORMAL, 1 = PNEUMONIA (the folder).
        split: ``"train"``, ``"val"`` or ``"test"`` (the folder).
        patient_id: ``personN`` for pneumonia, ``IM-xxxx`` for normals, else the file stem.
        subtype: ``"bacteria"`` or ``"virus"`` for pneumonia files named so, else ``None``.
    """

    image: Path
    label: int
    split: str
    patient_id: str
    subtype: str | None


def _patient_and_subtype(name: str) -> tuple[str, str | None]:
    stem = Path(name).stem
    match = re.match(r"(person\d+)_(bacteria|virus)", stem, flags=re.IGNORECASE)
    if match is not None:
        return match.group(1), match.group(2).lower()
    match = re.search(r"(IM-\d+)", stem)
    if match is not None:
        return match.group(1), None
    return stem, None


def _dataset_root(base: Path) -> Path:
    for candidate in (base, base / "chest_xray"):
        if any((candidate / split).is_dir() for split in KERMANY_SPLITS):
            return candidate
    raise FileNotFoundError(
        f"Kermany chest X-ray: no split folder {list(KERMANY_SPLITS)} in {base} or {base / 'chest_xray'}"
    )


def _image_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    suffixes = {ext.lower() for ext in extensions}
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )


def read_kermany_pneumonia(
    root: str | Path, split: str | None = None, *, extensions: Sequence[str] = _EXTENSIONS
) -> list[KermanyRecord]:
    """Read the Kermany pneumonia set from its folder tree.

    Args:
        root: The ``chest_xray`` folder, or the folder that holds it.
        split: ``"train"``, ``"val"``, ``"test"``, or ``None`` for every split folder present.
        extensions: Image file extensions to accept (case-insensitive).

    Returns:
        Records ordered by split (train, val, test), class (NORMAL, PNEUMONIA) and file name.

    Raises:
        FileNotFoundError: The folder, a requested split, a class folder is missing, or a class
            folder holds no image (named).
        ValueError: Unknown split.

    Examples:
        >>> records = read_kermany_pneumonia("chest_xray", "test")  # doctest: +SKIP
        >>> len(records), records[-1].patient_id, records[-1].subtype  # doctest: +SKIP
        (624, 'person99', 'virus')

    Reference:
        Kermany et al., Cell 2018; Mendeley Data rscbjbr9sj.
    """
    if split is not None and split not in KERMANY_SPLITS:
        raise ValueError(f"split must be None or one of {list(KERMANY_SPLITS)}, got {split!r}")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"Kermany chest X-ray: dataset folder {base} does not exist")
    data = _dataset_root(base)
    if split is not None and not (data / split).is_dir():
        raise FileNotFoundError(f"Kermany chest X-ray: split folder {data / split} does not exist")
    splits = [split] if split is not None else [s for s in KERMANY_SPLITS if (data / s).is_dir()]
    records = []
    for name in splits:
        for label, class_name in enumerate(KERMANY_CLASSES):
            folder = data / name / class_name
            if not folder.is_dir():
                raise FileNotFoundError(f"Kermany chest X-ray: class folder {folder} does not exist")
            files = _image_files(folder, extensions)
            if not files:
                raise FileNotFoundError(f"Kermany chest X-ray: no {list(extensions)} image in {folder}")
            for path in files:
                patient, subtype = _patient_and_subtype(path.name)
                records.append(KermanyRecord(path, label, name, patient, subtype))
    return records
