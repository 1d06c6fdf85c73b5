"""Shared helpers of the real-dataset readers: find files, read CSVs, fail with clear messages."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["find_file", "read_csv_rows", "resolve_image"]


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
    """Read a CSV into dicts keyed by stripped column names; raise naming any missing column.

    A file with a header and no data rows raises too (a label file without labels is a broken
    download or a wrong path, never an empty dataset), unless ``allow_empty``.
    """
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise ValueError(f"{path} is empty: expected a header row") from None
        missing = [name for name in required if name not in header]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; found columns {header}")
        rows = []
        for line_number, values in enumerate(reader, start=2):
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


def resolve_image(folders: Sequence[Path], name: str, extensions: Sequence[str] = ()) -> Path | None:
    """Find ``name`` (or its stem with one of ``extensions``) in the first folder that has it."""
    stem = Path(name).stem
    for folder in folders:
        for candidate in (name, *(stem + ext for ext in extensions)):
            path = folder / candidate
            if path.is_file():
                return path
    return None
