"""Spreadsheet rows for the readers: ``.xlsx`` through openpyxl, ``.csv`` through :func:`read_csv_rows`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qualcl.data.readers._files import read_csv_rows

__all__ = ["read_table_rows"]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_table_rows(path: Path, required: Iterable[str], *, sheet: str | None = None) -> list[dict[str, str]]:
    """Rows of a CSV or of one sheet of an ``.xlsx`` workbook, keyed by stripped column names.

    Each row also holds ``"__line__"`` (its 1-based line or spreadsheet row) for error messages.

    Raises:
        ValueError: A required column is missing, the sheet does not exist or holds no data rows.
        ImportError: ``.xlsx`` without openpyxl installed (``pip install openpyxl``, in the
            ``recipes`` extra), with the CSV alternative named.
    """
    wanted = list(required)
    if path.suffix.lower() != ".xlsx":
        return read_csv_rows(path, wanted)
    try:
        import openpyxl
    except ImportError:
        raise ImportError(f"reading {path} needs openpyxl (pip install openpyxl, or export the sheet as CSV)") from None
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise ValueError(f"{path} has no sheet {sheet!r}; found sheets {book.sheetnames}")
        rows = list((book[sheet] if sheet is not None else book.worksheets[0]).iter_rows(values_only=True))
    finally:
        book.close()
    if not rows:
        raise ValueError(f"{path} is empty: expected a header row")
    header = [_cell(name) for name in rows[0]]
    missing = [name for name in wanted if name not in header]
    if missing:
        raise ValueError(f"{path}{f' (sheet {sheet!r})' if sheet else ''} lacks column(s) {missing}; found {header}")
    out = []
    for number, values in enumerate(rows[1:], start=2):
        cells = [_cell(v) for v in values]
        if not any(cells):
            continue
        cells += [""] * (len(header) - len(cells))
        row = {name: value for name, value in zip(header, cells, strict=False) if name}
        row["__line__"] = str(number)
        out.append(row)
    if not out:
        raise ValueError(f"{path} has a header but no data rows")
    return out
