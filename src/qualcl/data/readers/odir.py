"""ODIR-5K reader: the annotation sheet's per-eye diagnostic keywords → per-eye labels and quality notes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qualcl.data.readers._files import refuse_conflicts, resolve_image
from qualcl.data.readers._sheets import read_table_rows

__all__ = ["ODIR_CATEGORIES", "ODIR_QUALITY", "ODIRRecord", "odir_keyword_labels", "read_odir"]

#: ODIR's eight categories (its N … O columns), in class-id order.
ODIR_CATEGORIES = {
    "N": "Normal",
    "D": "Diabetic retinopathy",
    "G": "Glaucoma",
    "C": "Cataract",
    "A": "Age-related macular degeneration",
    "H": "Hypertensive retinopathy",
    "M": "Pathological myopia",
    "O": "Other diseases/abnormalities",
}
#: Quality strata of ODIR eyes: a keyword notes an imaging problem ("low image quality", …) or not.
ODIR_QUALITY = ("Good", "Low")

#: Keywords that are notes on the photograph, not findings (they set the "Low" quality stratum).
QUALITY_KEYWORDS = ("low image quality", "lens dust", "image offset", "optic disk photographically invisible")
#: Keywords that mark an image that is not a fundus photograph (the eye is skipped).
NOT_FUNDUS = ("anterior segment image", "no fundus image")
#: DR severity keywords → ICDR grade (checked in this order). A phrase counts only where it is not
#: the tail of a longer "non(-)proliferative" phrase, so "non proliferative retinopathy" is never
#: read as "proliferative retinopathy" (grade 4).
DR_GRADES = (
    ("mild nonproliferative retinopathy", 1),
    ("mild non proliferative retinopathy", 1),
    ("moderate non proliferative retinopathy", 2),
    ("moderate nonproliferative retinopathy", 2),
    ("severe nonproliferative retinopathy", 3),
    ("severe non proliferative retinopathy", 3),
    ("proliferative diabetic retinopathy", 4),
    ("proliferative retinopathy", 4),
)
_COLUMNS = ("ID", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords")
SHEETS = ("ODIR-5K_Training_Annotations(Updated)_V2.xlsx", "data.xlsx", "ODIR-5K/data.xlsx", "annotations.csv")


@dataclass(frozen=True)
class ODIRRecord:
    """One ODIR eye.

    Attributes:
        image: Path of the photograph.
        patient_id: ODIR's ``ID``.
        eye: ``"left"`` or ``"right"``.
        keywords: The eye's diagnostic keywords, normalised (lower case, split on either comma).
        categories: Letters of :data:`ODIR_CATEGORIES` the keywords name (multi-label).
        label: Class id of the primary category: ``N`` if normal only, else the first of
            ``D, G, C, A, H, M, O`` present.
        dr_grade: ICDR grade from the DR keywords (0 for a normal eye), ``None`` when unknown
            (no DR keyword, or one without a severity such as ``non proliferative retinopathy``).
        quality: 0 = Good, 1 = Low (a quality keyword is present; :data:`ODIR_QUALITY`).
    """

    image: Path
    patient_id: str
    eye: str
    keywords: tuple[str, ...]
    categories: tuple[str, ...]
    label: int
    dr_grade: int | None
    quality: int


def _split_keywords(text: str) -> tuple[str, ...]:
    parts = text.replace("，", ",").replace("、", ",").replace(";", ",").split(",")
    return tuple(" ".join(p.strip().lower().replace("_", " ").split()) for p in parts if p.strip())


def _names(keyword: str, phrase: str) -> bool:
    """``phrase`` occurs in ``keyword`` as words, not as the tail of ``non proliferative`` / ``nonproliferative``."""
    return re.search(rf"(?<!non )(?<![\w-]){re.escape(phrase)}(?!\w)", keyword) is not None


def _category(keyword: str) -> str | None:
    if keyword in QUALITY_KEYWORDS or keyword in NOT_FUNDUS:
        return None
    if keyword == "normal fundus":
        return "N"
    if "hypertensive" in keyword:
        return "H"
    if "retinopathy" in keyword and ("diabetic" in keyword or "proliferative" in keyword):
        return "D"
    if "glaucoma" in keyword:
        return "G"
    if "cataract" in keyword:
        return "C"
    if "macular degeneration" in keyword:
        return "A"
    if "myopi" in keyword:
        return "M"
    return "O"


def odir_keyword_labels(text: str) -> tuple[tuple[str, ...], int, int | None, int] | None:
    """Map one eye's diagnostic keywords to ``(categories, label, dr_grade, quality)``; ``None`` if not a fundus image.

    The mapping (qualcl's, written out so it can be audited): ``normal fundus`` → N; a keyword with
    ``hypertensive`` → H; ``… diabetic retinopathy`` or ``… proliferative retinopathy`` → D (its
    severity → grade 1–4, :data:`DR_GRADES`; ``non proliferative retinopathy`` without ``mild``,
    ``moderate`` or ``severe`` is D with no grade, ``dr_grade = None``, as it may be any of 1–3 —
    never 4); ``glaucoma`` → G; ``cataract`` → C; ``macular
    degeneration`` → A; ``myopia`` / ``myopic`` → M; any other finding (drusen, laser spot,
    epiretinal membrane, …) → O. The notes in :data:`QUALITY_KEYWORDS` are not findings: they put
    the eye in the "Low" quality stratum (an eye with only notes is N). An eye with a keyword of
    :data:`NOT_FUNDUS` is not a fundus photograph.

    Examples:
        >>> odir_keyword_labels("moderate non proliferative retinopathy，laser spot")
        (('D', 'O'), 1, 2, 0)
        >>> odir_keyword_labels("normal fundus，lens dust")
        (('N',), 0, 0, 1)
        >>> odir_keyword_labels("non proliferative retinopathy")  # severity not given: no grade
        (('D',), 1, None, 0)
    """
    keywords = _split_keywords(text)
    if any(k in NOT_FUNDUS for k in keywords):
        return None
    letters = list(ODIR_CATEGORIES)
    found = {c for c in (_category(k) for k in keywords) if c is not None}
    if len(found) > 1:
        found.discard("N")  # "normal fundus" beside a finding: the finding wins
    if not found:
        found = {"N"}
    categories = tuple(c for c in letters if c in found)
    label = letters.index(categories[0] if categories != ("N",) else "N")
    grade: int | None = 0 if categories == ("N",) else None
    for phrase, value in DR_GRADES:
        if any(_names(k, phrase) and "hypertensive" not in k for k in keywords):
            grade = value
            break
    quality = int(any(k in QUALITY_KEYWORDS for k in keywords))
    return categories, label, grade, quality


def read_odir(
    root: str | Path,
    *,
    annotations: str | Path | None = None,
    image_dirs: Sequence[str | Path] | None = None,
    check_files: bool = True,
) -> list[ODIRRecord]:
    """Read ODIR-5K's annotation sheet into one record per eye with per-eye labels.

    ODIR's N … O columns are patient-level, so each eye's labels come from its own diagnostic
    keywords (:func:`odir_keyword_labels`); eyes whose keywords say the photograph is not of the
    fundus are left out. The sheet is ``ODIR-5K_Training_Annotations(Updated)_V2.xlsx`` or the
    Kaggle mirror's ``data.xlsx`` (needs openpyxl), or a CSV with the same columns; images are
    looked up in ``image_dirs`` (default: ``root/Training Images``, ``root/ODIR-5K/Training Images``,
    ``root/images``, ``root``).

    Args:
        root: Dataset folder.
        annotations: The sheet, if not one of :data:`SHEETS` in ``root``.
        image_dirs: Folders holding the images.
        check_files: Fail if an image is missing.

    Returns:
        One :class:`ODIRRecord` per eye (left, then right, per row).

    Raises:
        FileNotFoundError: The folder, the sheet or an image is missing (named).
        ValueError: A column is missing (file named), or one image is listed twice with different
            labels (file and both rows named).

    Examples:
        >>> eyes = read_odir("ODIR-5K")  # doctest: +SKIP
        >>> eyes[0].eye, eyes[0].categories  # doctest: +SKIP
        ('left', ('C',))

    Reference:
        Peking University, "ODIR-2019: Ocular Disease Intelligent Recognition" (ODIR-5K), 2019.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"ODIR-5K: dataset folder {base} does not exist")
    if annotations is not None:
        sheet = Path(annotations)
        if not sheet.is_file():
            raise FileNotFoundError(f"ODIR-5K: annotation sheet {sheet} does not exist")
    else:
        found = [base / name for name in SHEETS if (base / name).is_file()]
        if not found:
            raise FileNotFoundError(f"ODIR-5K: none of the annotation sheets {[str(base / n) for n in SHEETS]} exists")
        sheet = found[0]
    rows = read_table_rows(sheet, _COLUMNS)
    if image_dirs is not None:
        folders = [Path(f) for f in image_dirs]
    else:
        folders = [base / "Training Images", base / "ODIR-5K" / "Training Images", base / "images", base]
    records, wheres = [], []
    for row in rows:
        for side, eye in (("Left", "left"), ("Right", "right")):
            labels = odir_keyword_labels(row[f"{side}-Diagnostic Keywords"])
            if labels is None:
                continue
            name = row[f"{side}-Fundus"]
            where = f"{sheet}:{row['__line__']}"
            if not name:
                raise ValueError(f"{where}: {side}-Fundus is empty")
            path = resolve_image(folders, name, (".jpg", ".jpeg", ".png"))
            if path is None:
                if check_files:
                    raise FileNotFoundError(f"{where}: image {name!r} not found in {', '.join(map(str, folders))}")
                path = folders[0] / name
            categories, label, grade, quality = labels
            keywords = _split_keywords(row[f"{side}-Diagnostic Keywords"])
            records.append(ODIRRecord(path, row["ID"], eye, keywords, categories, label, grade, quality))
            wheres.append(where)
    labels_of = ((r.image, (r.categories, r.dr_grade, r.quality), w) for r, w in zip(records, wheres, strict=True))
    refuse_conflicts(labels_of, "labels (categories, DR grade, quality)")
    return records
