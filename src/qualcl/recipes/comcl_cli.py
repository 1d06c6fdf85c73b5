"""Command-line wiring of ``qualcl run comcl`` and ``qualcl run comcl-detector`` (imports the recipe lazily)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from qualcl.recipes.config import apply_overrides

__all__ = ["add_comcl_arguments", "add_detector_arguments", "main_comcl", "main_detector"]


def add_comcl_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``qualcl run comcl``."""
    parser.add_argument("--preset", default="default", choices=["smoke", "default", "paper"])
    parser.add_argument(
        "--dataset",
        default=None,
        choices=["synthetic", "eyeq", "nih-cxr14"],
        help="default: the preset's (synthetic for smoke/default)",
    )
    parser.add_argument("--data", default=None, help="dataset folder (real data, or an existing synthetic set)")
    parser.add_argument("--out", default="runs/comcl", help="run folder (default runs/comcl); re-running resumes")
    parser.add_argument("--seed", type=int, default=None, help="training seed")
    parser.add_argument("--ablation", action="store_true", help="run the ablation variants (Tables 2-3)")
    parser.add_argument("--seeds", default="0,1,2", help="ablation seeds, comma-separated (default 0,1,2)")
    parser.add_argument("--variants", default=None, help="ablation variants, comma-separated (default all)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set pretrain.steps=100 (repeatable)",
    )


def main_comcl(args: argparse.Namespace) -> int:
    """Run CoMCL (or its ablation) from parsed arguments."""
    from qualcl.recipes.comcl import comcl_config, run_ablation, run_comcl

    data: dict[str, object] = {}
    if args.dataset is not None:
        data["dataset"] = args.dataset
    if args.data is not None:
        data["data_dir"] = args.data
    config = apply_overrides(comcl_config(args.preset, **data), args.overrides)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    out = Path(args.out)
    if args.ablation:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        variants = args.variants.split(",") if args.variants else None
        run_ablation(config, out, seeds=seeds, variants=variants)
        print(f"ablation table: {out / 'ablation.md'}")
        print((out / "ablation.md").read_text())
        return 0
    metrics = run_comcl(config, out)
    print(json.dumps(metrics["test"]["original"]["overall"], indent=2))
    print(f"run folder: {out}  (metrics.json, plots/, weights/, MODEL_CARD.md)")
    return 0


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``qualcl run comcl-detector``."""
    parser.add_argument("--preset", default="default", choices=["smoke", "default", "paper"])
    parser.add_argument("--dataset", default=None, choices=["synthetic", "idrid"])
    parser.add_argument("--data", default=None, help="dataset folder")
    parser.add_argument("--out", default="runs/comcl-detector", help="run folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def main_detector(args: argparse.Namespace) -> int:
    """Train the CoMCL lesion detector from parsed arguments."""
    from qualcl.recipes.comcl import DETECTOR_PRESETS, run_comcl_detector

    config = dataclasses.replace(DETECTOR_PRESETS[args.preset])
    if args.dataset is not None:
        config.dataset = args.dataset
    if args.data is not None:
        config.data_dir = args.data
    config = apply_overrides(config, args.overrides)
    metrics = run_comcl_detector(config, args.out)
    print(json.dumps(metrics, indent=2))
    return 0
