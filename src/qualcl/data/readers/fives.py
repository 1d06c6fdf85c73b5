"""FIVES reader: ``{train,test}/Original/{n}_{A|D|G|N}.png``, vessel masks in ``Ground truth/``, quality sheet."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qualcl.data.readers._sheets import read_table_rows

__all__ = ["FIVES_CATEGORIES", "FIVES_FACTORS", "FIVESRecord", "read_fives"]

#: FIVES' categories by file-name letter, in class-id order.
FIVES_CATEGORIES = {
    "N": "Normal",
    "D": "Diabetic retinopathy",
    "G": "Glaucoma",
    "A": "Age-related macular degeneration",
}
#: The binary quality factors of ``Quality Assessment.xlsx`` (1 = good): contrast, blur, illumination.
FIVES_FACTORS = ("IC", "Blur", "LC")
_NAME = re.compile(r"^(\d+)_([ADGN])$")
_MASK_FOLDERS = ("Ground truth", "Groud truth", "Ground Truth", "GroundTruth")


@dataclass(frozen=True)
class FIVESRecord:
    """One FIVES image with its vessel mask.

    Attributes:
        image: The ``Original`` PNG.
        mask: The binary vessel PNG of the same name.
        number: The image number ``n``.
        category: The file-name letter, ``N``, ``D``, ``G`` or ``A``.
        label: Class id of the category in :data:`FIVES_CATEGORIES` order.
        split: ``"train"`` or ``"test"``.
        quality: ``{"IC", "Blur", "LC"}`` → 0/1 (1 = good) from the quality sheet, or ``None``.
        patient_id: ``"{split}/{n}"`` (FIVES does not link images of one patient).
        eye: Always ``None``.
    """

    image: Path
    mask: Path
    number: int
    category: str
    label: int
    split: str
    quality: dict[str, int] | None
    patient_id: str
    eye: str | None = None

    @property
    def good_quality(self) -> bool | None:
        """Whether every quality factor is good (``None`` without the sheet)."""
        return None if self.quality is None else all(v == 1 for v in self.quality.values())


def _quality(root: Path, split: str) -> dict[int, dict[str, int]] | None:
    sheet = root / "Quality Assessment.xlsx"
    if not sheet.is_file():
        csv = root / f"Quality Assessment {split}.csv"
        if not csv.is_file():
            return None
        sheet = csv
    rows = read_table_rows(sheet, ["Number", *FIVES_FACTORS], sheet=split if sheet.suffix == ".xlsx" else None)
    out: dict[int, dict[str, int]] = {}
    lines: dict[int, str] = {}
    for row in rows:
        where = f"{sheet}:{row['__line__']}"
        try:
            number = int(row["Number"])
            factors = {name: int(row[name]) for name in FIVES_FACTORS}
        except ValueError:
            raise ValueError(f"{where}: Number, IC, Blur and LC must be integers, got {row}") from None
        if any(v not in (0, 1) for v in factors.values()):
            raise ValueError(f"{where}: IC, Blur and LC must be 0 or 1, got {factors}")
        if number in out and out[number] != factors:
            raise ValueError(
                f"{where}: image {number} is listed twice with different quality factors: {out[number]} at "
                f"{sheet}:{lines[number]} and {factors} here"
            )
        out[number] = factors
        lines.setdefault(number, row["__line__"])
    return out


def read_fives(root: str | Path, split: str = "train") -> list[FIVESRecord]:
    """Read one FIVES split: images, their category (from the name) and vessel masks.

    The layout is ``root/{split}/Original/*.png`` and ``root/{split}/Ground truth/*.png`` (some
    copies spell it ``Groud truth``). ``Quality Assessment.xlsx`` (sheets ``train`` / ``test``,
    columns ``Number, Disease, IC, Blur, LC``; needs openpyxl), or a CSV export of a sheet named
    ``Quality Assessment {split}.csv``, adds the quality factors when present.

    Args:
        root: Dataset folder.
        split: ``"train"`` or ``"test"``.

    Returns:
        One :class:`FIVESRecord` per image, sorted by number.

    Raises:
        FileNotFoundError: The split's ``Original`` or mask folder, or an image's mask, is missing (named).
        ValueError: A file name is not ``{n}_{A|D|G|N}.png``, or the quality sheet is malformed.

    Examples:
        >>> records = read_fives("FIVES", "test")  # doctest: +SKIP
        >>> records[0].category, records[0].mask.name  # doctest: +SKIP
        ('A', '1_A.png')

    Reference:
        Jin et al., "FIVES: A Fundus Image Dataset for Artificial Intelligence based Vessel
        Segmentation", Scientific Data 9, 475 (2022).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = Path(root) / split
    originals = base / "Original"
    if not originals.is_dir():
        raise FileNotFoundError(f"FIVES: image folder {originals} does not exist")
    masks = next((base / name for name in _MASK_FOLDERS if (base / name).is_dir()), None)
    if masks is None:
        raise FileNotFoundError(f"FIVES: none of the mask folders {[str(base / n) for n in _MASK_FOLDERS]} exists")
    quality = _quality(Path(root), split)
    letters = list(FIVES_CATEGORIES)
    records = []
    for image in sorted(originals.glob("*.png")):
        match = _NAME.match(image.stem)
        if match is None:
            raise ValueError(f"FIVES: {image.name} is not named {{n}}_{{A|D|G|N}}.png")
        number, letter = int(match.group(1)), match.group(2)
        mask = masks / image.name
        if not mask.is_file():
            raise FileNotFoundError(f"FIVES: vessel mask {mask} of {image.name} does not exist")
        factors = None if quality is None else quality.get(number)
        records.append(
            FIVESRecord(image, mask, number, letter, letters.index(letter), split, factors, f"{split}/{number}")
        )
    if not records:
        raise FileNotFoundError(f"FIVES: {originals} holds no PNG images")
    return sorted(records, key=lambda r: r.number)
