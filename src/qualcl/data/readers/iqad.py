"""MKCNet's two constructed image-quality-aware diagnosis sets: CXR-IQAD and CT-IQAD.

**CXR-IQAD** (paper: 8,286 images; HQ child 2,929 / LQ child 2,927 / LQ adult 2,430; diagnosis
0 Normal, 1 Pneumonia). The paper says only that it combines paediatric radiographs (Kermany) and
NIH ChestX-ray14 adults, with "low dose simulated by bicubic down-sampling". qualcl's construction
(a decision, matched to MKCNet's split files where they tell):

1. Children: every image of the Kermany tree (5,856 in v2), label from the folder.
2. A seeded, per-diagnosis random half of the children becomes "LQ child" (quality 1) and is
   flagged for simulated low dose; the rest is "HQ child" (quality 0).
3. Adults ("LQ adult", quality 2) from NIH ChestX-ray14: every image whose findings include
   ``Pneumonia`` (1,431 in v2020; ``nih_pneumonia="only"`` keeps the ~320 with no other finding) as
   Pneumonia, and the first ``adult_normals`` ``No Finding`` images in CSV order as Normal (MKCNet's
   adult normals come from the lowest patient ids; 1,431 + ~1,000 fits its 2,430); images with any
   other finding are dropped, and so are patients younger than ``min_adult_age`` (default 18;
   MKCNet's own filter is unknown) when the age is known. Adults are flagged for simulated low dose
   too (``degrade_adults``), per the reading "LQ-A = low-dose adult".
4. The low dose is simulated lazily (:mod:`qualcl.data.readers.low_dose`): records carry
   ``low_dose_factor`` (default 4, applied after resizing to the network input by
   :func:`~qualcl.data.readers.low_dose.load_quality_image` with ``size``); nothing is written unless
   :func:`~qualcl.data.readers.low_dose.write_low_dose_images` is called.

**CT-IQAD** (paper: 2,346 images; HQ 1,600 / LQ 746): HQ = the SARS-CoV-2 CT-scan dataset
(Soares et al.; folders ``COVID`` and ``non-COVID``, 1,252 + 1,230 images; MKCNet kept 1,600 of
them — ``hq_per_class=800`` gives that total, MKCNet's per-class counts are not known), LQ = COVID-CT
(Zhao et al., "CT scans in the wild"; ``Images-processed/CT_COVID`` and ``CT_NonCOVID``, 349 + 397).
Diagnosis 1 = COVID, 0 = non-COVID, as in MKCNet's split files (``Covid (1109).png,1,1``). Neither
source gives patient ids, so ``patient_id`` is ``None`` (both hold several slices per patient:
random splits can leak).

Reference:
    H. Che, S. Chen, H. Chen, "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding",
    CVPR 2023.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

from qualcl.data.readers.kermany import read_kermany_pneumonia
from qualcl.data.readers.nih_cxr14 import CXRRecord, read_nih_cxr14
from qualcl.data.readers.quality import ExtraValue, QualityLabelledRecord

__all__ = ["CT_IQAD_HQ_CLASSES", "CT_IQAD_LQ_CLASSES", "build_ct_iqad", "build_cxr_iqad"]

#: Default class folders → diagnosis of the HQ source (SARS-CoV-2 CT-scan dataset, Kaggle).
CT_IQAD_HQ_CLASSES: Mapping[str, int] = {"COVID": 1, "non-COVID": 0}
#: Default class folders → diagnosis of the LQ source (COVID-CT, ``Images-processed``).
CT_IQAD_LQ_CLASSES: Mapping[str, int] = {"CT_COVID": 1, "CT_NonCOVID": 0}
_CT_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _seeded_subset(indices: list[int], count: int, generator: torch.Generator) -> list[int]:
    order = torch.randperm(len(indices), generator=generator).tolist()
    return sorted(indices[i] for i in order[:count])


def _adult_records(
    nih_root: str | Path,
    *,
    adult_normals: int | None,
    adult_normal_selection: str,
    nih_pneumonia: str,
    min_adult_age: int | None,
    generator: torch.Generator,
    low_dose: float | None,
    check_files: bool,
) -> list[QualityLabelledRecord]:
    pneumonia: list[CXRRecord] = []
    normal: list[CXRRecord] = []
    for record in read_nih_cxr14(nih_root, check_files=check_files):
        if min_adult_age is not None and record.age is not None and record.age < min_adult_age:
            continue
        if record.findings == ():
            normal.append(record)
        elif record.findings == ("Pneumonia",) or (nih_pneumonia == "any" and "Pneumonia" in record.findings):
            pneumonia.append(record)
    if adult_normals is not None and adult_normals < len(normal):
        if adult_normal_selection == "first":
            normal = normal[:adult_normals]
        else:
            normal = [normal[i] for i in _seeded_subset(list(range(len(normal))), adult_normals, generator)]
    chosen = sorted([(r, 0) for r in normal] + [(r, 1) for r in pneumonia], key=lambda item: item[0].image.name)
    out = []
    for record, diagnosis in chosen:
        extra: dict[str, ExtraValue] = {"findings": "|".join(record.findings) or "No Finding", "view": record.view}
        if record.age is not None:
            extra["age"] = record.age
        out.append(
            QualityLabelledRecord(
                image=record.image,
                diagnosis=diagnosis,
                quality=2,
                patient_id=record.patient_id,
                source="nih_cxr14",
                dataset="cxr_iqad",
                extra=extra,
                low_dose_factor=low_dose,
            )
        )
    return out


def build_cxr_iqad(
    kermany_root: str | Path,
    nih_root: str | Path,
    *,
    lq_child_fraction: float = 0.5,
    low_dose_factor: float = 4.0,
    degrade_adults: bool = True,
    adult_normals: int | None = 1000,
    adult_normal_selection: Literal["first", "random"] = "first",
    nih_pneumonia: Literal["any", "only"] = "any",
    min_adult_age: int | None = 18,
    seed: int = 43,
    check_files: bool = True,
) -> list[QualityLabelledRecord]:
    """Build CXR-IQAD from a Kermany ``chest_xray`` tree and NIH ChestX-ray14 (see the module docstring).

    Args:
        kermany_root: Kermany ``chest_xray`` folder (or its parent); every split is used.
        nih_root: NIH ChestX-ray14 folder (``Data_Entry_2017*.csv`` and the images).
        lq_child_fraction: Share of each diagnosis's children that becomes "LQ child", in [0, 1].
        low_dose_factor: Down-sampling ratio of the simulated low dose (>= 1); load the images with
            ``load_quality_image(record, size=(256, 256))`` so that it applies at the network input.
        degrade_adults: Also flag the adult images for simulated low dose.
        adult_normals: How many NIH ``No Finding`` images to keep (``None``: all 60,361).
        adult_normal_selection: Keep the ``"first"`` ones in CSV order (MKCNet-like) or a seeded
            ``"random"`` subset.
        nih_pneumonia: ``"any"``: findings include ``Pneumonia``; ``"only"``: ``Pneumonia`` alone.
        min_adult_age: Drop NIH patients younger than this when the age is known (``None``: keep all).
        seed: Seed of the LQ-child choice (and of the random adult normals).
        check_files: Check that every image exists (NIH: against the image folders).

    Returns:
        Children (Kermany order: split, class, file name) then adults (by image name), with
        ``dataset="cxr_iqad"``; LQ records carry ``low_dose_factor``.

    Raises:
        FileNotFoundError: A folder, a label file or an image is missing (named).
        ValueError: An argument is out of range.

    Examples:
        >>> records = build_cxr_iqad("chest_xray", "NIH")  # doctest: +SKIP
        >>> sum(r.quality_name == "LQ child" for r in records)  # Kermany v2: 792 + 2,136  # doctest: +SKIP
        2928

    Reference:
        Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding", CVPR 2023;
        Kermany et al., Cell 2018; Wang et al., CVPR 2017.
    """
    if not 0.0 <= lq_child_fraction <= 1.0:
        raise ValueError(f"lq_child_fraction must lie in [0, 1], got {lq_child_fraction}")
    if not low_dose_factor >= 1:
        raise ValueError(f"low_dose_factor must be >= 1, got {low_dose_factor}")
    if adult_normals is not None and adult_normals < 0:
        raise ValueError(f"adult_normals must be None or >= 0, got {adult_normals}")
    if adult_normal_selection not in ("first", "random"):
        raise ValueError(f"adult_normal_selection must be 'first' or 'random', got {adult_normal_selection!r}")
    if nih_pneumonia not in ("any", "only"):
        raise ValueError(f"nih_pneumonia must be 'any' or 'only', got {nih_pneumonia!r}")
    generator = torch.Generator().manual_seed(seed)
    children = read_kermany_pneumonia(kermany_root)
    low: set[int] = set()
    for label in (0, 1):
        indices = [i for i, r in enumerate(children) if r.label == label]
        low.update(_seeded_subset(indices, round(lq_child_fraction * len(indices)), generator))
    records = []
    for i, child in enumerate(children):
        extra: dict[str, ExtraValue] = {"split": child.split}
        if child.subtype is not None:
            extra["subtype"] = child.subtype
        records.append(
            QualityLabelledRecord(
                image=child.image,
                diagnosis=child.label,
                quality=1 if i in low else 0,
                patient_id=child.patient_id,
                source="kermany",
                dataset="cxr_iqad",
                extra=extra,
                low_dose_factor=low_dose_factor if i in low else None,
            )
        )
    records += _adult_records(
        nih_root,
        adult_normals=adult_normals,
        adult_normal_selection=adult_normal_selection,
        nih_pneumonia=nih_pneumonia,
        min_adult_age=min_adult_age,
        generator=generator,
        low_dose=low_dose_factor if degrade_adults else None,
        check_files=check_files,
    )
    return records


def _class_folder(root: Path, name: str, what: str) -> Path:
    for parent in (root, root / "Images-processed"):
        if (parent / name).is_dir():
            return parent / name
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise FileNotFoundError(f"{what}: class folder {name!r} not found in {root}; found subfolders {found}")


def _source_records(
    root: str | Path,
    classes: Mapping[str, int],
    *,
    quality: int,
    source: str,
    what: str,
    per_class: int | None,
    generator: torch.Generator,
    extensions: Sequence[str],
) -> list[QualityLabelledRecord]:
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{what}: folder {base} does not exist")
    if not classes:
        raise ValueError(f"{what}: the class-folder mapping is empty")
    bad = {name: value for name, value in classes.items() if value not in (0, 1)}
    if bad:
        raise ValueError(f"{what}: diagnoses must be 0 (non-COVID) or 1 (COVID), got {bad}")
    suffixes = {ext.lower() for ext in extensions}
    out = []
    for name, diagnosis in classes.items():
        folder = _class_folder(base, name, what)
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
        )
        if not files:
            raise FileNotFoundError(f"{what}: class folder {folder} holds no {sorted(suffixes)} image")
        if per_class is not None and per_class < len(files):
            files = [files[i] for i in _seeded_subset(list(range(len(files))), per_class, generator)]
        out += [
            QualityLabelledRecord(path, diagnosis, quality, None, source, "ct_iqad", extra={"folder": name})
            for path in files
        ]
    return out


def build_ct_iqad(
    hq_root: str | Path,
    lq_root: str | Path,
    *,
    hq_classes: Mapping[str, int] | None = None,
    lq_classes: Mapping[str, int] | None = None,
    hq_per_class: int | None = None,
    seed: int = 43,
    extensions: Sequence[str] = _CT_EXTENSIONS,
) -> list[QualityLabelledRecord]:
    """Build CT-IQAD from its HQ source (SARS-CoV-2 CT-scan) and LQ source (COVID-CT) folders.

    Args:
        hq_root: SARS-CoV-2 CT-scan folder holding the class folders (default ``COVID``, ``non-COVID``).
        lq_root: COVID-CT folder holding the class folders directly or under ``Images-processed``
            (default ``CT_COVID``, ``CT_NonCOVID``).
        hq_classes: Class folder → diagnosis (0 non-COVID, 1 COVID) of the HQ source; default
            :data:`CT_IQAD_HQ_CLASSES`.
        lq_classes: The same for the LQ source; default :data:`CT_IQAD_LQ_CLASSES`.
        hq_per_class: Keep at most this many HQ images per class folder, a seeded random subset
            (``None``: all; 800 gives the paper's 1,600 HQ images in total).
        seed: Seed of that subset.
        extensions: Image file extensions to accept (case-insensitive).

    Returns:
        HQ records (quality 0, ``source="sars_cov2_ct"``) then LQ records (quality 1,
        ``source="covid_ct"``), per class folder in mapping order and by file name, with
        ``dataset="ct_iqad"``, ``patient_id=None`` and ``extra["folder"]``.

    Raises:
        FileNotFoundError: A root or class folder is missing, or a class folder is empty (named).
        ValueError: A diagnosis is not 0/1, a mapping is empty, or ``hq_per_class`` is negative.

    Examples:
        >>> records = build_ct_iqad("sarscov2-ctscan", "COVID-CT")  # doctest: +SKIP
        >>> sum(r.quality for r in records)  # doctest: +SKIP
        746

    Reference:
        Che et al., CVPR 2023; Soares et al., "SARS-CoV-2 CT-scan dataset", medRxiv 2020;
        Zhao et al., "COVID-CT-Dataset: A CT Scan Dataset about COVID-19", arXiv 2003.13865.
    """
    if hq_per_class is not None and hq_per_class < 0:
        raise ValueError(f"hq_per_class must be None or >= 0, got {hq_per_class}")
    generator = torch.Generator().manual_seed(seed)
    hq = _source_records(
        hq_root,
        CT_IQAD_HQ_CLASSES if hq_classes is None else hq_classes,
        quality=0,
        source="sars_cov2_ct",
        what="CT-IQAD HQ source (SARS-CoV-2 CT-scan)",
        per_class=hq_per_class,
        generator=generator,
        extensions=extensions,
    )
    lq = _source_records(
        lq_root,
        CT_IQAD_LQ_CLASSES if lq_classes is None else lq_classes,
        quality=1,
        source="covid_ct",
        what="CT-IQAD LQ source (COVID-CT)",
        per_class=None,
        generator=generator,
        extensions=extensions,
    )
    return hq + lq
