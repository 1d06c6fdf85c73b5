"""Shared helpers of the real-dataset readers: find files, read CSVs, fail with clear messages."""

from __future__ import annotations

import csv
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

__all__ = ["find_file", "int_cell", "not_utf8", "read_csv_rows", "read_text", "refuse_conflicts", "resolve_image"]


def find_file(root: Path, candidates: Sequence[str], what: str) -> Path:
    """Return the first of ``candidates`` (relative to ``root``) that exists, else raise naming them."""
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: dataset folder {root} does not exist")
    for name in candidates:
        path = root / name
        if path.is_file():
            return path
    tried = ", ".join(str(root / name) for name in candidates)
    raise FileNotFoundError(f"{what}: none of these files exists: {tried}")


def read_csv_rows(path: Path, required: Iterable[str], *, allow_empty: bool = False) -> list[dict[str, str]]:
    """Read a UTF-8 CSV into dicts keyed by stripped column names; raise naming any missing column.

    A file with a header and no data rows raises too (a label file without labels is a broken
    download or a wrong path, never an empty dataset), unless ``allow_empty``. A file that is not
    UTF-8 (a latin-1 export, say) raises naming the file and its first undecodable line.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return _read_rows(path, csv.reader(handle), list(required), allow_empty)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` (a byte-order mark dropped); a non-UTF-8 file raises naming its first bad line."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def not_utf8(path: Path) -> ValueError:
    """The error for a text file that is not UTF-8: ``file:line`` of the first line that does not decode."""
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            byte = line[error.start : error.start + 1]
            return ValueError(
                f"{path}:{number}: the file is not UTF-8 text (byte {byte!r} at column {error.start + 1}); "
                "re-save it as UTF-8 (latin-1 / Windows-1252 exports are not read)"
            )
    return ValueError(f"{path}: the file is not UTF-8 text; re-save it as UTF-8")


def _read_rows(path: Path, reader: Iterable[list[str]], required: list[str], allow_empty: bool) -> list[dict[str, str]]:
    lines = iter(reader)
    try:
        header = [name.strip() for name in next(lines)]
    except StopIteration:
        raise ValueError(f"{path} is empty: expected a header row") from None
    missing = [name for name in required if name not in header]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; found columns {header}")
    rows = []
    for line_number, values in enumerate(lines, start=2):
        if not any(v.strip() for v in values):
            continue
        if len(values) < len(header):
            values = values + [""] * (len(header) - len(values))
        row = {name: value.strip() for name, value in zip(header, values, strict=False) if name}
        row["__line__"] = str(line_number)
        rows.append(row)
    if not rows and not allow_empty:
        raise ValueError(f"{path} has a header but no data rows: expected one row per image")
    return rows


def int_cell(row: dict[str, str], column: str, where: str, allowed: Sequence[int]) -> int:
    """The integer in ``row[column]``, one of ``allowed``; else a ``ValueError`` naming ``where`` (file:line).

    ``"2"`` and ``"2.0"`` (a spreadsheet's float export) are read as 2; ``"2.5"``, ``"two"`` and an
    empty cell are refused, never truncated.
    """
    text = row.get(column, "").strip()
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    values = list(allowed)
    span = values == list(range(values[0], values[-1] + 1)) if values else False
    within = f"lie in {values[0]}..{values[-1]}" if span else f"be one of {values}"
    if not number.is_integer():
        raise ValueError(f"{where}: {column} must be an integer and {within}, got {text!r}")
    value = int(number)
    if value not in values:
        raise ValueError(f"{where}: {column} must {within}, got {value}")
    return value


def refuse_conflicts(entries: Iterable[tuple[Hashable, object, str]], what: str) -> None:
    """Refuse one image listed twice with different labels.

    Args:
        entries: ``(image key, label, where)`` per row; ``where`` is ``file:line``. The key is what
            identifies the image (its resolved path, so two spellings of one file are one image).
        what: What the label is, for the message (``"DR grade"``).

    Raises:
        ValueError: Naming the image, both rows and both labels.
    """
    first: dict[Hashable, tuple[object, str]] = {}
    for key, label, where in entries:
        if key in first and first[key][0] != label:
            label0, where0 = first[key]
            raise ValueError(
                f"{where}: image {key} is listed twice with different {what}: {label0!r} at {where0} and "
                f"{label!r} here; fix the label file (one row per image)"
            )
        first.setdefault(key, (label, where))


def resolve_image(folders: Sequence[Path], name: str, extensions: Sequence[str] = ()) -> Path | None:
    """Find ``name`` (or its stem with one of ``extensions``) in the first folder that has it."""
    stem = Path(name).stem
    for folder in folders:
        for candidate in (name, *(stem + ext for ext in extensions)):
            path = folder / candidate
            if path.is_file():
                return path
    return None
