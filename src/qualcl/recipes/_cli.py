"""``qualcl run <recipe>``: the options every recipe shares, built from its :class:`~qualcl.recipes.config.RecipeSpec`.

Everything up to the start of a run (``--help``, argument and config errors) comes from the spec;
the recipe itself, and with it torch, is imported only when the run starts.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import json
import math
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "RecipeEntry",
    "SuggestingParser",
    "add_run_arguments",
    "build_recipe_parser",
    "config_from_arguments",
    "lazy_exports",
    "main_recipe",
]

#: The ``trainer.*`` fields with an option of their own (``--num-nodes`` sets ``num_nodes``); a
#: ``Literal`` field's values are the option's choices.
TRAINER_OPTIONS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "logger")


def _import(target: str) -> Any:
    """The object at ``"module:attribute.path"``."""
    module, _, attribute = target.partition(":")
    return functools.reduce(getattr, attribute.split("."), importlib.import_module(module))


class RecipeEntry(NamedTuple):
    """Where a recipe lives, so that ``qualcl list`` and ``qualcl run NAME --help`` do not import torch.

    Attributes:
        module: Module holding the recipe object.
        attribute: Name of the :class:`~qualcl.recipes.driver.Recipe` instance in it.
        description: One line for ``qualcl list recipes``.
        spec: ``"module:attribute"`` of its :class:`~qualcl.recipes.config.RecipeSpec` (a torch-free module).
    """

    module: str
    attribute: str
    description: str
    spec: str

    def load(self) -> Any:
        """Import and return the recipe object."""
        return _import(f"{self.module}:{self.attribute}")

    def load_spec(self) -> Any:
        """Import and return the spec the options and the config come from (no torch)."""
        return _import(self.spec)


class SuggestingParser(argparse.ArgumentParser):
    """An argument parser that adds the closest choice to an "invalid choice" error (``did you mean``)."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as error:
            if action.choices is None or not isinstance(value, str):
                raise
            from qualcl.recipes.config import did_you_mean

            raise argparse.ArgumentError(action, f"{error.message}{did_you_mean(value, action.choices)}") from None


def type_checking_exports(path: str | Path) -> dict[str, str]:
    """The names a package's ``if TYPE_CHECKING:`` block imports, as :func:`lazy_exports` wants them.

    ``from M import a, b`` gives ``{"a": "M", "b": "M"}``; ``name = OBJ.attr.path`` (``OBJ``
    imported there from ``M``) gives ``{"name": "M:OBJ.attr.path"}``. So a package declares its lazy
    names once, in the block type checkers read.
    """
    exports: dict[str, str] = {}
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in tree.body:
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            continue
        for statement in node.body:
            if isinstance(statement, ast.ImportFrom) and statement.module:
                exports.update({alias.asname or alias.name: statement.module for alias in statement.names})
            elif isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
                dotted = ast.unparse(statement.value)
                module = exports.get(dotted.split(".")[0])
                if module is not None:
                    exports[statement.targets[0].id] = f"{module}:{dotted}"
    return exports


def lazy_exports(package: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` that import each exported name on first use.

    Args:
        package: The package's ``__name__``; its exports are what its ``if TYPE_CHECKING:`` block
            imports (:func:`type_checking_exports`).

    Returns:
        ``(__getattr__, __dir__)`` for the package's namespace (PEP 562).
    """
    exports = type_checking_exports(str(sys.modules[package].__file__))

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = _import(target if ":" in target else f"{target}:{name}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__


def add_run_arguments(parser: argparse.ArgumentParser, recipe: Any, *, ablation: bool) -> None:
    """Add the options of ``qualcl run <recipe>`` for ``recipe`` (a :class:`~qualcl.recipes.config.RecipeSpec`)."""
    from qualcl.recipes.config import TrainerConfig

    parser.add_argument("--preset", default="default", choices=sorted(recipe.presets))
    parser.add_argument(
        "--dataset", choices=list(recipe.datasets), help="default: the preset's (synthetic for smoke/default)"
    )
    parser.add_argument("--data", help=recipe.data_help)
    out = f"runs/{recipe.name}"
    parser.add_argument(
        "--out", default=out, help=f"run folder (default {out}); re-running with the same config resumes"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over instead of resuming, with this config or another (deletes the run's files, keeps data/)",
    )
    parser.add_argument("--seed", type=int, help="training seed")
    scale = parser.add_argument_group("scale-out (Lightning: devices, DDP under torchrun / SLURM, precision, logging)")
    hints = typing.get_type_hints(TrainerConfig)
    for name in TRAINER_OPTIONS:
        choices = typing.get_args(hints[name]) or None  # a Literal's values
        kind = str if choices else hints[name]
        scale.add_argument("--" + name.replace("_", "-"), type=kind, choices=choices, help="default: the preset's")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {recipe.set_example} (repeatable)",
    )
    if ablation:
        group = parser.add_argument_group("ablation")
        group.add_argument("--ablation", action="store_true", help="run the paper's ablation variants over seeds")
        group.add_argument("--seeds", default="0,1,2", help="ablation seeds, comma-separated (default 0,1,2)")
        group.add_argument("--collect", action="store_true", help="train nothing, tabulate the finished runs only")
        group.add_argument("--variants", default=None, help="ablation variants, comma-separated (default all)")


def config_from_arguments(recipe: Any, args: argparse.Namespace) -> Any:
    """The config of spec ``recipe`` from parsed options: preset, dataset, folder, seed, scale-out, ``--set``."""
    overrides = [f"trainer.{name}={getattr(args, name)}" for name in TRAINER_OPTIONS if getattr(args, name) is not None]
    return recipe.config(
        args.preset, dataset=args.dataset, data_dir=args.data, overrides=[*overrides, *args.overrides], seed=args.seed
    )


def build_recipe_parser(entry: RecipeEntry, name: str) -> tuple[argparse.ArgumentParser, Any]:
    """The parser of ``qualcl run <name>`` and the recipe's spec (:meth:`RecipeEntry.load_spec`; no torch)."""
    spec = entry.load_spec()
    parser = SuggestingParser(prog=f"qualcl run {name}", description=entry.description)
    add_run_arguments(parser, spec, ablation=bool(spec.ablations))
    return parser, spec


def main_recipe(entry: RecipeEntry, name: str, argv: Sequence[str]) -> int:
    """Parse ``argv`` for recipe ``name`` (checked against its spec, no torch yet) and run it (or its ablation)."""
    parser, spec = build_recipe_parser(entry, name)
    args = parser.parse_args(list(argv))
    config = config_from_arguments(spec, args)
    recipe = entry.load()
    out = Path(args.out)
    if getattr(args, "ablation", False):
        from qualcl.recipes.ablation import run_ablation

        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        variants = args.variants.split(",") if args.variants else None
        run_ablation(recipe, config, out, seeds=seeds, variants=variants, run_missing=not args.collect)
        print((out / "ablation.md").read_text())
        return 0
    metrics = recipe.run(config, out, overwrite=args.overwrite)
    from qualcl.recipes.driver import is_global_zero

    if not is_global_zero():  # one summary, from the process that wrote the run folder
        return 0
    try:
        print(recipe.summary(config, metrics))
    except NotImplementedError:  # a recipe that names no headline metric: its test metrics, one per line
        print(_metric_lines(recipe.headline(metrics)))
    print(f"everything else: {out}/metrics.json (all metrics), MODEL_CARD.md, plots/, weights/")
    return 0


def _metric_lines(headline: dict[str, Any]) -> str:
    """``test metrics:`` and one aligned ``name  value`` line per metric, "—" where a value is missing or not finite."""
    width = max((len(k) for k in headline), default=0)

    def text(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return json.dumps(value, default=str)
        return f"{value:.3f}" if math.isfinite(value) else "—"

    return "\n".join(["test metrics:", *(f"  {k.ljust(width)}  {text(v)}" for k, v in headline.items())])
