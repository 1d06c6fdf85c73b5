"""Command-line wiring of ``qualcl run comcl`` and ``qualcl run comcl-detector`` (imports the recipe lazily)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from qualcl.recipes._cli import ablation_arguments, add_run_arguments, config_from_arguments
from qualcl.recipes.config import apply_overrides

__all__ = ["add_comcl_arguments", "add_detector_arguments", "main_comcl", "main_detector"]


def add_comcl_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``qualcl run comcl``."""
    add_run_arguments(
        parser,
        datasets=["synthetic", "eyeq", "nih-cxr14"],
        default_out="runs/comcl",
        data_help="dataset folder (real data, or an existing synthetic set)",
        ablation_help="run the ablation variants (Tables 2-3)",
        variants_help="ablation variants, comma-separated (default all)",
        set_example="pretrain.steps=100",
    )


def main_comcl(args: argparse.Namespace) -> int:
    """Run CoMCL (or its ablation) from parsed arguments."""
    from qualcl.recipes.comcl import comcl_config, run_ablation, run_comcl

    config = config_from_arguments(comcl_config, args)
    out = Path(args.out)
    if args.ablation:
        run_ablation(config, out, **ablation_arguments(args))
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
