"""What qualcl offers, grouped as the documentation site is: one group per API page.

``qualcl list`` prints these groups (each public primitive with the first line of its docstring
and the site page that documents it), and the documentation build generates one API page per
group from the same table, so the command and the site never disagree. :func:`entries` imports
the modules; :func:`read_entries` reads the same table from their source files (no torch, for a
quick ``qualcl list``) and falls back to importing wherever the source alone cannot tell.

Examples:
    >>> group = GROUPS[0]
    >>> group.key, group.page
    ('losses', 'api/losses.md')
    >>> entry = next(e for e in entries(group) if e.name == "InfoNCE")
    >>> entry.kind, entry.path
    ('class', 'qualcl.losses.InfoNCE')
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["GROUPS", "Entry", "Group", "entries", "group", "read_entries"]


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


# ---------------------------------------------------------------- the same table, read from the sources

#: Decorators that keep a definition's kind and docstring (``overload`` stubs are skipped).
_KEEP_DECORATORS = frozenset(
    {"dataclass", "dataclasses.dataclass", "runtime_checkable", "typing.runtime_checkable", "final", "typing.final"}
    | {"functools.cache", "cache", "functools.lru_cache", "lru_cache"}
)
#: Subscripted names whose values are type aliases (``constant`` entries).
_TYPING = frozenset({"Literal", "tuple", "list", "dict", "set", "frozenset", "type", "Callable", "Union", "Optional"})


class _Unreadable(Exception):
    """The source alone does not tell (a computed value, an unknown decorator, a missing extra)."""


_Symbol = tuple[Literal["class", "function", "constant"], str | None, tuple[str, str]]


class _SourceReader:
    """Resolves the exported names of qualcl's modules from their source files (ASTs), importing nothing."""

    def __init__(self) -> None:
        self.root = Path(__file__).parent
        self.trees: dict[str, tuple[ast.Module, bool]] = {}
        self.checked: set[str] = set()

    def _locate(self, module: str) -> tuple[Path, bool] | None:
        """The file of a qualcl module and whether it is a package (``None``: no such file)."""
        base = self.root.joinpath(*module.split(".")[1:])
        if (base / "__init__.py").is_file():
            return base / "__init__.py", True
        return (base.with_suffix(".py"), False) if base.with_suffix(".py").is_file() else None

    def tree(self, module: str) -> tuple[ast.Module, bool]:
        """The parsed module and whether it is a package; what it imports must be installed."""
        if module not in self.trees:
            found = self._locate(module)
            if found is None:
                raise _Unreadable(module)
            self.trees[module] = (ast.parse(found[0].read_text(encoding="utf-8")), found[1])
            self._check_imports(module)
        return self.trees[module]

    def _source(self, module: str, node: ast.ImportFrom) -> str:
        return _absolute(module, self.trees[module][1], node.level, node.module or "")

    def _check_imports(self, module: str) -> None:
        """Every module-level import, qualcl's own transitively, must be installed (else importing raises).

        Reads the import lines (column 0: module level) as text; parsing every file would cost more
        than the listing itself.
        """
        if module in self.checked:
            return
        self.checked.add(module)
        found = self._locate(module)
        if found is None:
            return
        for match in _IMPORT_LINE.finditer(found[0].read_text(encoding="utf-8")):
            dots, source, names, plain = match.groups()
            if plain is not None:
                targets = [name.split(" as ")[0].strip() for name in plain.split(",")]
            else:
                source = _absolute(module, found[1], len(dots), source)
                names = [name.split(" as ")[0].strip() for name in names.strip("( \t").split(",")]
                targets = [source, *(f"{source}.{name}" for name in names if name)]  # submodules, where they are
            for target in targets:
                top = target.split(".")[0]
                if top == "qualcl":
                    self._check_imports(target)
                elif top and top != "__future__" and top not in self.checked:
                    self.checked.add(top)
                    if top not in sys.modules and importlib.util.find_spec(top) is None:
                        raise _Unreadable(top)

    def all_names(self, module: str) -> list[str]:
        """The module's literal ``__all__``."""
        tree, _ = self.tree(module)
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                value = ast.literal_eval(node.value)
                if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                    return list(value)
        raise _Unreadable(f"{module}.__all__")

    def symbol(self, module: str, name: str, depth: int = 0) -> _Symbol:
        """``(kind, docstring, (defining module, name))`` of ``module.name``."""
        if depth > 20:
            raise _Unreadable(f"{module}.{name}")
        tree, _ = self.tree(module)
        found: (
            ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef | ast.ImportFrom | ast.Assign | ast.AnnAssign | None
        )
        found = None
        for node in tree.body:  # the last definition wins, as at run time
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                if any(_decorator(d) in ("overload", "typing.overload") for d in node.decorator_list):
                    continue
                found = node
            elif isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                found = node
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                found = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                found = node
        if found is None:
            raise _Unreadable(f"{module}.{name}")
        if isinstance(found, ast.ImportFrom):
            source = self._source(module, found)
            original = next(a.name for a in found.names if (a.asname or a.name) == name)
            if not source.startswith("qualcl"):
                raise _Unreadable(f"{source}.{original}")
            return self.symbol(source, original, depth + 1)
        if isinstance(found, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if not all(_decorator(d) in _KEEP_DECORATORS for d in found.decorator_list):
                raise _Unreadable(f"{module}.{name}")
            doc = ast.get_docstring(found)
            if isinstance(found, ast.ClassDef) and doc is None:  # inherited or generated at run time
                raise _Unreadable(f"{module}.{name}")
            return ("class" if isinstance(found, ast.ClassDef) else "function", doc, (module, name))
        value = found.value
        if isinstance(value, (ast.Name, ast.Attribute)) and not isinstance(found, ast.AnnAssign):
            if isinstance(value, ast.Name) and value.id != name:
                return self.symbol(module, value.id, depth + 1)
            raise _Unreadable(f"{module}.{name}")
        if value is not None and _is_constant(value):
            return ("constant", None, (module, name))
        if (
            isinstance(value, ast.Subscript)
            and isinstance(value.value, ast.Name)
            and isinstance(value.slice, ast.Slice)
        ):
            if self.symbol(module, value.value.id, depth + 1)[0] == "constant":  # a slice of a sequence
                return ("constant", None, (module, name))
        raise _Unreadable(f"{module}.{name}")


#: A module-level import line: ``from .x import a, b`` (dots, module, names) or ``import x, y`` (names).
_IMPORT_LINE = re.compile(
    r"^(?:from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+([^\n#]*)|import[ \t]+([^\n#]*))", re.MULTILINE
)


def _absolute(module: str, package: bool, level: int, source: str) -> str:
    """The absolute name of ``from <level dots><source> import ...`` in ``module``."""
    if level == 0:
        return source
    parts = module.split(".") if package else module.split(".")[:-1]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, *([source] if source else [])])


def _decorator(node: ast.expr) -> str:
    return ast.unparse(node.func if isinstance(node, ast.Call) else node)


def _is_constant(node: ast.expr) -> bool:
    """Whether the value is data or a type alias (neither a class nor a callable)."""
    if isinstance(node, (ast.Constant, ast.JoinedStr, ast.Dict, ast.DictComp, ast.ListComp, ast.SetComp)):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):  # a container built by its type
        return node.func.id in ("dict", "tuple", "list", "set", "frozenset", "MappingProxyType")
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_is_constant(e) or isinstance(e, (ast.Name, ast.Attribute)) for e in node.elts)
    if isinstance(node, ast.Starred):
        return _is_constant(node.value) or isinstance(node.value, ast.Name)
    if isinstance(node, ast.Subscript):
        return _decorator(node.value).rsplit(".", 1)[-1] in _TYPING
    if isinstance(node, ast.UnaryOp):
        return _is_constant(node.operand)
    if isinstance(node, ast.BinOp):  # ``1 << 20``, ``int | None``
        return all(
            _is_constant(side) or isinstance(side, (ast.Name, ast.Attribute)) for side in (node.left, node.right)
        )
    return False


def read_entries(item: Group) -> list[Entry]:
    """:func:`entries` of a group, read from its source files (no imports) where they tell.

    The table is the same (a test checks it for every group); it falls back to importing the
    group's modules when a name is computed at run time, decorated in a way the source does not
    show, documented only by inheritance, or when a third-party module they import is missing.

    Raises:
        ModuleNotFoundError: When a module of the group cannot be imported (a missing extra).
    """
    reader = _SourceReader()
    seen: set[tuple[str, str]] = set()
    out: list[Entry] = []
    try:
        for module_name in item.modules:
            for name in reader.all_names(module_name):
                kind, doc, identity = reader.symbol(module_name, name)
                if kind != "constant":
                    if identity in seen:
                        continue
                    seen.add(identity)
                summary = doc.strip().splitlines()[0] if doc else ""
                out.append(Entry(name, module_name, kind, summary))
    except (_Unreadable, SyntaxError, ValueError, OSError):
        return entries(item)
    return out
