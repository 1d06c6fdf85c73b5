"""What qualcl offers, grouped as the documentation site is: one group per API page.

``qualcl list`` prints these groups (each public primitive with the first line of its docstring
and the site page that documents it), and the documentation build generates one API page per
group from the same table, so the command and the site never disagree.

Examples:
    >>> group = GROUPS[0]
    >>> group.key, group.page
    ('losses', 'api/losses.md')
    >>> entry = next(e for e in entries(group) if e.name == "InfoNCE")
    >>> entry.kind, entry.path
    ('class', 'qualcl.losses.InfoNCE')
"""

from __future__ import annotations

import importlib
import inspect
import typing
from dataclasses import dataclass
from typing import Literal

__all__ = ["GROUPS", "Entry", "Group", "entries", "group"]


@dataclass(frozen=True)
class Group:
    """One API page: a title, what the group is for, and the modules whose ``__all__`` it shows.

    Attributes:
        key: Short name (``qualcl list <key>``, the page ``api/<key>.md``).
        title: Page title.
        summary: One line on what the group holds.
        modules: Modules whose ``__all__`` the group lists, in order; a name re-exported by a
            later module is shown once, under the first.
    """

    key: str
    title: str
    summary: str
    modules: tuple[str, ...]

    @property
    def page(self) -> str:
        """The group's page in the documentation site, relative to ``docs/``."""
        return f"api/{self.key}.md"


@dataclass(frozen=True)
class Entry:
    """One public name of a group.

    Attributes:
        name: The name as exported.
        module: The module that exports it (where users import it from).
        kind: ``"class"``, ``"function"`` or ``"constant"`` (type aliases included).
        summary: The first line of its docstring (empty for constants without one).
    """

    name: str
    module: str
    kind: Literal["class", "function", "constant"]
    summary: str

    @property
    def path(self) -> str:
        """``module.name``, the import path (and the documentation's anchor)."""
        return f"{self.module}.{self.name}"


#: The API pages, in the site's order: what users call first, the bottom layers last.
GROUPS: tuple[Group, ...] = (
    Group("losses", "Losses", "losses as nn.Modules, each with its equation and defaults", ("qualcl.losses",)),
    Group("functional", "Functional", "pure tensor functions behind the losses and decoders", ("qualcl.functional",)),
    Group(
        "samplers",
        "Samplers and miners",
        "patch samplers, batch samplers, hard-negative miners and their schedules",
        ("qualcl.samplers",),
    ),
    Group("heads", "Heads", "attention blocks, decoders, fusion and projection heads", ("qualcl.heads",)),
    Group(
        "models",
        "Models",
        "encoders (CNN and ViT, one contract), the text towers (scratch and pretrained) and their tokenizer",
        ("qualcl.models",),
    ),
    Group("optim", "Optimizer wrappers", "the meta-auxiliary optimizer of MKCNet", ("qualcl.optim",)),
    Group("kernels", "Kernels", "fused and streaming ops with reference fallbacks", ("qualcl.kernels",)),
    Group("distributed", "Distributed", "gathers with and without gradient, rank helpers", ("qualcl.distributed",)),
    Group(
        "data",
        "Data",
        "the synthetic fundus generator, degradations, image tables and readers of real datasets",
        ("qualcl.data", "qualcl.data.synthetic", "qualcl.data.readers"),
    ),
    Group(
        "metrics",
        "Metrics",
        "grading, diagnosis and retrieval metrics, stratified by quality",
        ("qualcl.metrics",),
    ),
    Group(
        "evaluation",
        "Evaluation",
        "linear and kNN probes, feature geometry, an exact retrieval index",
        ("qualcl.evaluation",),
    ),
)


def group(key: str) -> Group:
    """The group called ``key``.

    Raises:
        ValueError: For an unknown key (the message lists the known ones).
    """
    for candidate in GROUPS:
        if candidate.key == key:
            return candidate
    raise ValueError(f"unknown group {key!r}; choose one of {[g.key for g in GROUPS]}")


def _kind(obj: object) -> Literal["class", "function", "constant"]:
    if typing.get_origin(obj) is not None:  # a type alias such as ``tuple[int, int]`` or a ``Literal``
        return "constant"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "constant"


def entries(item: Group) -> list[Entry]:
    """The public names of a group: every module's ``__all__`` in order, each object once.

    Raises:
        ModuleNotFoundError: When a module of the group cannot be imported (a missing extra).
    """
    seen: set[int] = set()
    out: list[Entry] = []
    for module_name in item.modules:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            kind = _kind(obj)
            if kind != "constant":
                if id(obj) in seen:
                    continue
                seen.add(id(obj))
            doc = inspect.getdoc(obj) if kind != "constant" else None
            summary = doc.strip().splitlines()[0] if doc else ""
            out.append(Entry(name, module_name, kind, summary))
    return out
