"""The ``qualcl`` command: ``list`` what the library offers, ``run`` a recipe, ``data synth`` embedded data.

The parser, ``--help`` and every option or config error come from light modules (the recipe
registry and each recipe's config; no torch), so they answer at once; torch is imported by the
command that needs it (a run, ``data synth``, ``list`` of the primitives).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from qualcl import __version__

__all__ = ["build_parser", "main"]


def _cmd_list(args: argparse.Namespace) -> int:
    from qualcl.catalog import GROUPS, read_entries

    if args.what in ("all", "recipes"):
        from qualcl.recipes import RECIPES

        print("qualcl run — recipes (docs: recipes.md and each recipe's page)")
        width = max(map(len, RECIPES))
        for name, recipe in RECIPES.items():
            print(f"    {name:{width}s}  {recipe.description}")
    if args.what == "models":
        from qualcl.models import ENCODERS

        print("qualcl.models — build_encoder(name)")
        width = max(map(len, ENCODERS))
        for name, info in ENCODERS.items():
            print(f"    {name:{width}s}  {info.family:4s} {info.description}")
    for item in GROUPS:
        if args.what not in ("all", item.key):
            continue
        try:
            found = read_entries(item)  # from the sources: no torch unless they cannot tell
        except ModuleNotFoundError as error:  # a group whose optional extra is not installed
            print(f"{item.title} — not available ({error.name} is not installed)")
            continue
        print(f"\n{item.title} — {item.summary} (docs: {item.page})")
        module = None
        for entry in found:
            if entry.kind == "constant":
                continue
            if entry.module != module and len(item.modules) > 1:
                module = entry.module
                print(f"  {module}")
            print(f"    {entry.name:32s} {entry.summary}")
        constants = [e.name for e in found if e.kind == "constant"]
        if constants:
            print(f"    constants and types: {', '.join(constants)}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from qualcl.recipes import RECIPES
    from qualcl.recipes._cli import main_recipe

    return main_recipe(RECIPES[args.recipe], args.recipe, args.options)


def _cmd_synth_fundus(args: argparse.Namespace) -> int:
    from qualcl.data.synthetic import save_preview_grid, write_fundus_dataset

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    start = time.perf_counter()
    summary = write_fundus_dataset(
        out,
        num_images=args.num_images,
        size=args.size,
        seed=args.seed,
        lq_ratio=args.lq_ratio,
        progress=not args.no_progress,
    )
    preview = save_preview_grid(out, out / "preview.png")
    elapsed = time.perf_counter() - start
    print(f"wrote {args.num_images} images ({args.size} px, seed {args.seed}) to {out} in {elapsed:.1f} s")
    print(f"summary: {summary}")
    print(f"preview: {preview}  (rows: DR grade 0-4; columns: Good / Usable / Reject)")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the ``qualcl`` argument parser."""
    from qualcl.recipes._cli import SuggestingParser

    parser = SuggestingParser(
        prog="qualcl",
        description="Quality-aware representation learning on medical images.",
    )
    parser.add_argument("--version", action="version", version=f"qualcl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from qualcl.catalog import GROUPS

    listing = commands.add_parser(
        "list", help="the public primitives, grouped as the docs site is, with the first line of each docstring"
    )
    listing.add_argument("what", nargs="?", default="all", choices=["all", "recipes"] + [g.key for g in GROUPS])
    listing.set_defaults(func=_cmd_list)

    from qualcl.recipes import RECIPES

    run = commands.add_parser(
        "run",
        help="run a paper recipe end to end (see `qualcl list recipes`)",
        description="Run a recipe; `qualcl run RECIPE --help` shows its options.",
    )
    run.add_argument("recipe", choices=list(RECIPES), metavar="RECIPE", help=", ".join(RECIPES))
    run.add_argument("options", nargs=argparse.REMAINDER, help="the recipe's options")
    run.set_defaults(func=_cmd_run)

    data = commands.add_parser("data", help="embedded data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth = data_commands.add_parser("synth", help="generate a synthetic, quality-labelled dataset")
    kinds = synth.add_subparsers(dest="kind", required=True, metavar="KIND")
    fundus = kinds.add_parser(
        "fundus",
        help="procedural fundus photographs with DR grades, lesion masks and quality labels",
        description=(
            "Write seeded procedural fundus images (PNG), lesion/vessel masks, EyeQ-format CSVs "
            "(Label_EyeQ_train.csv / Label_EyeQ_test.csv, split by patient), ground_truth.json and "
            "preview.png. The same seed and arguments give byte-identical files."
        ),
    )
    fundus.add_argument("--out", required=True, help="output folder")
    fundus.add_argument("--num-images", type=_positive_int, default=400, help="number of images (default 400)")
    fundus.add_argument("--size", type=_positive_int, default=128, help="image side in pixels (default 128)")
    fundus.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    fundus.add_argument(
        "--lq-ratio",
        type=_ratio,
        default=0.34,
        help="fraction of low-quality (Usable or Reject) images (default 0.34, as in EyeQ train)",
    )
    fundus.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fundus.set_defaults(func=_cmd_synth_fundus)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``qualcl`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except BrokenPipeError:
        # the reader of our output went away (`qualcl list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        # bad input (ours, Lightning's configuration checks, a path the OS refuses): one line, not a traceback
        if isinstance(error, (ValueError, OSError)) or type(error).__name__ == "MisconfigurationException":
            print(f"qualcl: error: {error}", file=sys.stderr)
            return 2
        raise
    return status


if __name__ == "__main__":
    raise SystemExit(main())
