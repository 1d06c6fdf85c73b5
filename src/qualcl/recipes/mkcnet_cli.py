"""Command-line wiring of ``qualcl run mkcnet`` (imports the recipe lazily)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qualcl.recipes._cli import ablation_arguments, add_run_arguments, config_from_arguments

__all__ = ["add_mkcnet_arguments", "main_mkcnet"]


def add_mkcnet_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``qualcl run mkcnet``."""
    add_run_arguments(
        parser,
        datasets=["synthetic", "eyeq", "deepdrid", "drac", "cxr-iqad", "ct-iqad"],
        default_out="runs/mkcnet",
        data_help="dataset folder; cxr-iqad wants kermany/ and nih/ inside it, ct-iqad hq/ and lq/",
        ablation_help="run the ablation variants (paper Fig. 4-6) and the training LQ-ratio sweep (Fig. 5)",
        variants_help="ablation variants, comma-separated (default all, e.g. vanilla,mkcnet,mkcnet@lq50)",
        set_example="train.epochs=5",
    )


def main_mkcnet(args: argparse.Namespace) -> int:
    """Run MKCNet (or its ablation) from parsed arguments."""
    from qualcl.recipes.mkcnet import mkcnet_config, run_ablation, run_mkcnet

    config = config_from_arguments(mkcnet_config, args)
    out = Path(args.out)
    if args.ablation:
        run_ablation(config, out, **ablation_arguments(args))
        print((out / "ablation.md").read_text())
        return 0
    metrics = run_mkcnet(config, out)
    print(json.dumps(metrics["test"]["overall"], indent=2))
    print(f"run folder: {out}  (metrics.json, plots/, weights/, MODEL_CARD.md)")
    return 0
