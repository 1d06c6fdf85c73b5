"""Command-line options every recipe shares: preset, dataset, folders, seeds, ablation, ``--set`` overrides."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from qualcl.recipes.config import apply_overrides

__all__ = ["ablation_arguments", "add_run_arguments", "config_from_arguments"]

C = TypeVar("C")


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    datasets: Sequence[str],
    default_out: str,
    data_help: str,
    ablation_help: str,
    variants_help: str,
    set_example: str,
) -> None:
    """Add the options of ``qualcl run <recipe>``."""
    parser.add_argument("--preset", default="default", choices=["smoke", "default", "paper"])
    parser.add_argument(
        "--dataset", default=None, choices=list(datasets), help="default: the preset's (synthetic for smoke/default)"
    )
    parser.add_argument("--data", default=None, help=data_help)
    parser.add_argument("--out", default=default_out, help=f"run folder (default {default_out}); re-running resumes")
    parser.add_argument("--seed", type=int, default=None, help="training seed")
    parser.add_argument("--ablation", action="store_true", help=ablation_help)
    parser.add_argument("--seeds", default="0,1,2", help="ablation seeds, comma-separated (default 0,1,2)")
    parser.add_argument(
        "--collect", action="store_true", help="with --ablation: train nothing, tabulate the finished runs only"
    )
    parser.add_argument("--variants", default=None, help=variants_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {set_example} (repeatable)",
    )


def config_from_arguments(make_config: Callable[..., C], args: argparse.Namespace) -> C:
    """``make_config(preset, dataset=..., data_dir=...)`` with the ``--set`` overrides and ``--seed`` applied."""
    data: dict[str, object] = {}
    if args.dataset is not None:
        data["dataset"] = args.dataset
    if args.data is not None:
        data["data_dir"] = args.data
    config = apply_overrides(make_config(args.preset, **data), args.overrides)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)  # type: ignore[type-var]
    return config


def ablation_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``seeds``, ``variants`` and ``run_missing`` keyword arguments of a recipe's ``run_ablation``."""
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = args.variants.split(",") if args.variants else None
    return {"seeds": seeds, "variants": variants, "run_missing": not args.collect}
