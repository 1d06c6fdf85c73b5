"""The papers' claims as measured, and where a run's configuration stands among those measurements.

A recipe declares its paper's claims (:class:`~qualcl.recipes.config.Claim`); ``qualcl run NAME
--ablation`` measures them with paired seeds. The measurements published on the claims page
(``docs/results/claims.md``) are kept in ``claims_measured.json`` next to this module, each with the
exact configuration of every variant it ran, so a run's model card can say whether its configuration
is one that was measured, or how it differs from the nearest one: :func:`standing`.

Maintainers publish a finished ablation in one step with
``python -m qualcl.recipes.claims publish DIR --recipe NAME --stem PAGE --title "..." --provenance "..."``
(its table, JSON and plot become ``docs/results/PAGE.*``, the measurement is recorded and the claims page's
table regenerated; ``--lead`` publishes the page without recording it), or run the steps apart:
``record DIR --recipe NAME --command "qualcl run ..." --page PAGE.md`` and ``table``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

#: The measurements (one per ablation: recipe, command, page, date, each variant's config, the claims).
MEASURED = Path(__file__).with_name("claims_measured.json")
#: Config keys that do not change what a measurement measured: the seed (measurements span seeds),
#: where the data lies, the trainer's scale-out options and what only adds evaluations: the extra test-only
#: images and CoMCL's frozen-encoder ``probe`` (its ablation variants turn it on).
IGNORED = ("preset", "seed", "data.seed", "data.data_dir", "data.extra_test_images", "trainer", "probe")


def measurements(recipe: str | None = None) -> list[dict[str, Any]]:
    """The recorded measurements, all or one recipe's, in the order they were recorded."""
    found = json.loads(MEASURED.read_text()) if MEASURED.is_file() else []
    return [m for m in found if recipe is None or m["recipe"] == recipe]


def _ignored(name: str, ignored: Sequence[str]) -> bool:
    """Whether the dotted key ``name`` is one of ``ignored`` or lies in an ignored section."""
    return any(name == i or name.startswith(f"{i}.") for i in ignored)


def flat_config(config: Mapping[str, Any], ignored: Sequence[str] = IGNORED, prefix: str = "") -> dict[str, Any]:
    """``{"data.image_size": 64, ...}`` of a nested config dict, without the ``ignored`` keys (or sections)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if _ignored(name, ignored):
            continue
        if isinstance(value, Mapping):
            flat |= flat_config(value, ignored, f"{name}.")
        else:
            flat[name] = list(value) if isinstance(value, tuple | list) else value
    return flat


def _differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    keys = sorted(set(ours) | set(theirs))
    return [f"`{k}` {theirs.get(k, '—')} → {ours.get(k, '—')}" for k in keys if ours.get(k) != theirs.get(k)]


def config_differences(ours: Mapping[str, Any], recorded: Mapping[str, Any], added: Mapping[str, Any]) -> list[str]:
    """The settings by which a configuration differs from a measured variant's, as ``"`key` theirs → ours"``.

    Keys ignored now (:data:`IGNORED`) are ignored in the record too, and a setting the record lacks (added to
    the recipe after it was recorded) is taken at its default, since a new option keeps the earlier behaviour
    by default.

    Args:
        ours: The configuration, flattened (:func:`flat_config`).
        recorded: A variant's recorded configuration (a measurement's ``configs[variant]``).
        added: The config class's defaults, flattened (``{}``: a setting the record lacks differs from any value).

    Returns:
        One entry per differing setting, sorted by key; empty when the configuration is the measured one.
    """
    theirs = {k: v for k, v in {**added, **recorded}.items() if not _ignored(k, IGNORED)}
    return _differences(dict(ours), theirs)


def _row(claim: dict[str, Any]) -> str:
    interval = f"{claim['mean']:+.3f} [{claim['low']:+.3f}, {claim['high']:+.3f}]" if claim["pairs"] > 1 else "n/a"
    return f"{claim['statement']}: {interval}, **{claim['verdict']}** ({claim['pairs']} paired seeds)"


def standing(recipe: str, config: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> str:
    """The model card's paragraph on where ``config`` stands among the recipe's measured claims.

    A setting added to the recipe after a measurement was recorded is absent from its configs; it is
    taken to have had its default there (``defaults``), since a new option keeps the earlier
    behaviour by default.

    Args:
        recipe: The recipe's name.
        config: The run's config as a dict (:func:`~qualcl.recipes.config.config_to_dict`).
        defaults: The config class's defaults as such a dict (``config_to_dict(ConfigClass())``),
            or ``None``: a setting a measurement lacks then differs from any value.

    Returns:
        Markdown: the measured variant this configuration is (seed, data folder, extra test images and
        trainer options aside) with its claims' intervals and verdicts, or the nearest measured variant
        and the settings that differ, or that the recipe's claims are not measured yet.

    Examples:
        >>> standing("no-such-recipe", {"seed": 0}).startswith("No claim of this recipe")
        True
    """
    page = "the claims page (docs/results/claims.md in the repository, *Results* on the documentation site)"
    ours = flat_config(config)
    added = flat_config(defaults or {})
    best: tuple[int, dict[str, Any], str, list[str]] | None = None
    for m in measurements(recipe):
        for variant, recorded in m["configs"].items():
            diff = config_differences(ours, recorded, added)
            if best is None or len(diff) < best[0]:
                best = (len(diff), m, variant, diff)
    if best is None:
        return f"No claim of this recipe has been measured with paired seeds yet; its claims are listed on {page}."
    _, m, variant, diff = best
    about = [c for c in m["claims"] if variant in (c["variant"], c["reference"])]
    rows = "\n".join(f"- {_row(c)}" for c in about)
    where = f"`{m['command']}` ({m['date']}; {page})"
    if not diff:
        return f"This configuration is the `{variant}` variant measured by {where}:\n\n{rows}"
    shown = "; ".join(diff[:6]) + (f"; … ({len(diff)} in all)" if len(diff) > 6 else "")
    return (
        f"This configuration was not measured. The nearest measured one, the `{variant}` variant of {where}, "
        f"differs in {shown}. Its claims there:\n\n{rows}"
    )


def record(folder: str | Path, recipe: str, command: str, page: str) -> dict[str, Any]:
    """Add (or replace, by command) the measurement of the finished ablation in ``folder``.

    Args:
        folder: The ablation's ``--out`` (its ``ablation.json`` and ``<variant>/seed<k>/config.yaml``).
        recipe: The recipe's name.
        command: The command that made it, as the claims page shows it.
        page: The results page of the full table (a file name in ``docs/results``).

    Returns:
        The measurement as recorded.
    """
    root = Path(folder)
    doc = json.loads((root / "ablation.json").read_text())
    variants = [v for v in doc if v != "claims"]
    # a ladder may run only some variants: the claims comparing one that did not run measured nothing
    measured = [c for c in doc["claims"] if c["variant"] in variants and c["reference"] in variants]
    configs = {}
    for variant in variants:
        first = min((root / variant).glob("seed*/config.yaml"), key=lambda p: int(p.parent.name[4:]))
        configs[variant] = flat_config(yaml.safe_load(first.read_text()))
    entry = {
        "recipe": recipe,
        "command": command,
        "page": page,
        "date": time.strftime("%Y-%m-%d"),
        "configs": configs,
        "claims": measured,
    }
    kept = [m for m in measurements() if m["command"] != command]
    MEASURED.write_text(json.dumps([*kept, entry], indent=1) + "\n")
    return entry


def table() -> str:
    """The claims page's table: one row per declared claim, measured or not, in declaration order."""
    from qualcl.recipes import RECIPES

    columns = ("recipe", "claim", "comparison", "metric (stratum)", "pairs (seeds)", "mean difference [95 % CI]")
    lines = ["| " + " | ".join([*columns, "verdict", "command"]) + " |", "|---" * 8 + "|"]
    for name in RECIPES:
        spec = RECIPES[name].load_spec()
        for claim in spec.claims:
            found = [(m, c) for m in measurements(name) for c in m["claims"] if c["statement"] == claim.statement]
            comparison = f"`{claim.variant}` vs `{claim.reference}`"
            metric = f"`{claim.metric}` ({claim.stratum})"
            if not found:
                command = f"qualcl run {name} --ablation --seeds 0,1,2,3,4 --variants {claim.variant},{claim.reference}"
                lines.append(
                    f"| {name} | {claim.statement} | {comparison} | {metric} | — | not measured yet | — | `{command}` |"
                )
                continue
            for m, c in found:
                seeds = ",".join(map(str, c["seeds"]))
                interval = f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" if c["pairs"] > 1 else "n/a"
                lines.append(
                    f"| {name} | {claim.statement} | {comparison} | {metric} | {c['pairs']} ({seeds}) | {interval} "
                    f"| **{c['verdict']}** | `{m['command']}` |"
                )
    return "\n".join(lines)


def replace_table(page: str | Path) -> None:
    """Replace the claims table in ``page`` (the block of lines from ``| recipe | claim |``) with :func:`table`."""
    path = Path(page)
    lines = path.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("| recipe | claim |")]
    if len(starts) != 1:
        raise ValueError(f"page must hold one claims table (a line starting '| recipe | claim |'), found {len(starts)}")
    end = starts[0]
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    path.write_text("\n".join([*lines[: starts[0]], *table().splitlines(), *lines[end:]]) + "\n")


def publish(
    folder: str | Path,
    recipe: str,
    stem: str,
    title: str,
    provenance: str,
    *,
    docs: str | Path = "docs/results",
    lead: bool = False,
    force: bool = False,
) -> Path:
    """Publish a finished ablation as a results page and (unless ``lead``) as a claims measurement.

    The ablation's ``ablation.md`` becomes ``docs/STEM.md`` with ``title`` as its heading, its plot
    (``STEM.png``) shown under it, and its reproduction command followed by ``provenance`` (how and on
    which code it ran); ``ablation.json`` becomes ``STEM.json``. A claims measurement is then recorded
    under that command (:func:`record`) and the table of ``docs/claims.md`` regenerated
    (:func:`replace_table`). A lead (a configuration tested but not a claims measurement) is published
    without either. The page still has to be added to the site's navigation.

    Args:
        folder: The ablation's ``--out`` after ``--collect`` (``ablation.md``, ``ablation.json``, ``ablation.png``).
        recipe: The recipe's name (as ``qualcl run`` takes it).
        stem: The page's file name without extension, e.g. ``mkcnet_claims_e40``.
        title: The page's heading.
        provenance: How the runs ran (threads, processes, code commit, date), appended to the command.
        docs: The results folder.
        lead: Publish the page only: record nothing and leave the claims table as it is.
        force: Replace a page of that name (otherwise refused).

    Returns:
        The page written.

    Example:
        >>> publish("runs/abl", "mkcnet", "mkcnet_claims_e40", "MKCNet: 40 epochs", "code abc123")  # doctest: +SKIP
    """
    root, docs = Path(folder), Path(docs)
    if not (root / "ablation.md").is_file() or not (root / "ablation.json").is_file():
        raise ValueError(f"folder must hold a collected ablation (ablation.md, ablation.json), got {root}")
    if not docs.is_dir():
        raise ValueError(f"docs must be the results folder, got {docs} (run from the repository root)")
    page = docs / f"{stem}.md"
    if page.exists() and not force:
        raise ValueError(f"stem {stem!r}: {page} exists (force=True / --force replaces it)")
    lines = (root / "ablation.md").read_text().rstrip("\n").splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError(f"{root / 'ablation.md'} does not start with a heading")
    commands = [i for i, line in enumerate(lines) if line.startswith("Command: `")]
    if len(commands) != 1:
        raise ValueError(f"{root / 'ablation.md'} must hold one 'Command:' line, found {len(commands)}")
    command = lines[commands[0]].split("`")[1]
    lines[commands[0]] = f"Command: `{command}` ({provenance})"
    head = [f"# {title}"]
    if (root / "ablation.png").is_file():
        shutil.copyfile(root / "ablation.png", docs / f"{stem}.png")
        head += ["", f"![{recipe}: the claims' metric per seed, overall and per stratum]({stem}.png)"]
    page.write_text("\n".join([*head, *lines[1:]]) + "\n")
    shutil.copyfile(root / "ablation.json", docs / f"{stem}.json")
    if not lead:
        record(root, recipe, command, page.name)
        replace_table(docs / "claims.md")
    return page


def main(argv: list[str] | None = None) -> int:
    """``publish`` or ``record`` a finished ablation, or print the claims ``table``."""
    parser = argparse.ArgumentParser(prog="python -m qualcl.recipes.claims", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("record", help="add a finished ablation's claims and variant configs")
    add.add_argument("folder")
    add.add_argument("--recipe", required=True)
    add.add_argument("--command", required=True, dest="run_command")
    add.add_argument("--page", required=True)
    commands.add_parser("table", help="print the claims page's table")
    out = commands.add_parser("publish", help="a finished ablation as a results page, recorded, the table regenerated")
    out.add_argument("folder")
    out.add_argument("--recipe", required=True)
    out.add_argument("--stem", required=True, help="the page's file name in docs/results, without .md")
    out.add_argument("--title", required=True)
    out.add_argument("--provenance", required=True, help="threads, processes, code commit, date")
    out.add_argument("--docs", default="docs/results")
    out.add_argument("--lead", action="store_true", help="publish the page only, not as a claims measurement")
    out.add_argument("--force", action="store_true", help="replace an existing page")
    args = parser.parse_args(argv)
    if args.command == "publish":
        try:
            page = publish(
                args.folder,
                args.recipe,
                args.stem,
                args.title,
                args.provenance,
                docs=args.docs,
                lead=args.lead,
                force=args.force,
            )
        except ValueError as error:
            parser.error(str(error))
        done = "" if args.lead else ", recorded it, regenerated the claims table"
        print(f"published {page}{done}; add it to mkdocs.yml")
    elif args.command == "record":
        entry = record(args.folder, args.recipe, args.run_command, args.page)
        print(f"recorded {len(entry['claims'])} claims of {args.recipe} in {MEASURED}")
    else:
        print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
