"""One case per loss of :mod:`qualcl.losses` for the convention tests (``tests/losses/test_conventions.py``).

Each module of this package holds ``CASES``, a list of :class:`LossCase`; :data:`ALL` collects them
all, so a new loss only needs a case in the module of its family.
"""

from __future__ import annotations

import importlib
import pkgutil

from losscases._case import LossCase, split_rows

__all__ = ["ALL", "LossCase", "split_rows"]

ALL: list[LossCase] = [
    case
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
    if not info.name.startswith("_")
    for case in importlib.import_module(f"losscases.{info.name}").CASES
]
