"""The one ablation runner: variants declared beside the presets, run over seeds, resumed, collected, tabulated.

A recipe declares its variants in its spec (``RecipeSpec.ablations``: ``{name: Variant(label,
overrides)}``, the overrides in ``--set`` form) and says which cells of a run's ``metrics.json`` the
tables show (:meth:`~qualcl.recipes.driver.Recipe.ablation_cells` and ``ablation_columns``);
:func:`run_ablation` does the rest for every recipe: ``qualcl run NAME --ablation``.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qualcl.evaluation.seeds import mean_std, paired_difference
from qualcl.recipes.config import Claim, Variant, apply_overrides, did_you_mean
from qualcl.recipes.run_folder import RunFolderBusy, read_metrics, strict_json

__all__ = ["ablation_table", "claim_results", "quality_rank", "run_ablation", "strata_order", "variant_config"]


def quality_rank(level: str) -> tuple[int, str]:
    """Sort key of quality levels: Good, Usable, Reject first (best to worst), any other level after them by name.

    Examples:
        >>> sorted(["Reject", "Low", "Good", "Usable"], key=quality_rank)
        ['Good', 'Usable', 'Reject', 'Low']
    """
    from qualcl.data.loading import FUNDUS_QUALITY

    return (FUNDUS_QUALITY.index(level), "") if level in FUNDUS_QUALITY else (len(FUNDUS_QUALITY), level)


def strata_order(strata: Iterable[str]) -> list[str]:
    """One order of strata for every table: ``overall``, the quality levels best first, then the rest by name.

    Examples:
        >>> strata_order(["grade 1", "Reject", "overall", "Good", "grade 0"])
        ['overall', 'Good', 'Reject', 'grade 0', 'grade 1']
    """
    unique = list(dict.fromkeys(strata))
    return sorted(unique, key=lambda s: (s != "overall", quality_rank(s)))


def claim_results(
    claims: Sequence[Claim], per_seed: Mapping[str, Mapping[int, Mapping[str, Mapping[str, float]]]]
) -> list[dict[str, Any]]:
    """Each claim measured on the finished runs: ``{variant: {seed: {stratum: {metric: value}}}}`` paired by seed.

    A claim comparing a variant that was not run (``--variants`` named a subset: a scale ladder) is left out.
    """
    rows = []
    for claim in claims:
        if claim.variant not in per_seed or claim.reference not in per_seed:
            continue
        mine, theirs = per_seed[claim.variant], per_seed[claim.reference]
        seeds = sorted(set(mine) & set(theirs))
        cells = [[runs[s].get(claim.stratum, {}).get(claim.metric) for s in seeds] for runs in (mine, theirs)]
        a, b = ([math.nan if v is None else float(v) for v in side] for side in cells)
        result = paired_difference(a, b) if claim.higher_is_better else paired_difference(b, a)
        rows.append({**dataclasses.asdict(claim), **result, "seeds": seeds})
    return rows


def variant_config(
    config: Any, variants: Mapping[str, Variant], name: str, seed: int, data_dir: str | None = None
) -> Any:
    """``config`` with variant ``name``'s overrides (as ``--set`` applies them), seed ``seed``, no progress bars.

    Args:
        config: The base config (preset, dataset and ``--set`` already applied).
        variants: The recipe's declared variants.
        name: The variant.
        seed: The training seed.
        data_dir: The data folder every run shares (``None``: the base config's).

    Raises:
        ValueError: An unknown variant (with the closest name), or an override the config refuses
            (named with the variant).
    """
    if name not in variants:
        raise ValueError(f"unknown ablation variant {name!r}{did_you_mean(name, variants)}; known: {list(variants)}")
    try:
        changed = apply_overrides(config, [*variants[name].overrides, f"seed={seed}", "trainer.progress=false"])
    except ValueError as error:
        raise ValueError(f"ablation variant {name!r}: {error}") from None
    if data_dir is not None:
        changed = dataclasses.replace(changed, data=dataclasses.replace(changed.data, data_dir=data_dir))
    return changed


def run_ablation(
    recipe: Any,
    config: Any,
    out: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] | None = None,
    progress: bool = True,
    run_missing: bool = True,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Run a recipe's ablation: every variant for every seed (resumable), then ``ablation.md``/``.json`` and a plot.

    Each run lives in ``out/<variant>/seed<k>`` and is read back when finished, so an interrupted
    ablation continues where it stopped; all runs share one dataset (the config's data folder, else
    the cached synthetic set). Every variant is checked (overrides applied, the recipe's
    :meth:`check`) before anything trains. Several processes may share one ablation (the same
    command started in each, one thread apiece): a run another process holds
    (:class:`~qualcl.recipes.run_folder.RunFolderBusy`) is left to it and out of this process's
    table; ``run_missing=False`` (``--collect``) tabulates every finished run once they all end.

    Args:
        recipe: The :class:`~qualcl.recipes.driver.Recipe` (its spec declares the variants).
        config: The base config.
        out: The ablation's folder.
        seeds: Training seeds.
        variants: Variant names (default: all, in declaration order).
        progress: Print a line per finished run.
        run_missing: Train the runs not finished yet (``False``: tabulate the finished ones only).

    Returns:
        ``{variant: {stratum: {metric: [one value per finished seed]}}}``.
    """
    from qualcl.recipes.driver import is_global_zero
    from qualcl.recipes.plots import plot_variant_dots

    declared: Mapping[str, Variant] = recipe.spec.ablations
    if not declared:
        raise ValueError(f"recipe {recipe.name!r} declares no ablation")
    names = list(declared) if variants is None else list(variants)
    for name in names:  # every variant is checked before anything trains
        recipe.check(variant_config(config, declared, name, seeds[0] if seeds else 0))
    root = Path(out)
    columns = recipe.ablation_columns(config)
    first = next(iter(columns))
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    per_seed: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    for name in names:
        for seed in seeds:
            done = root / name / f"seed{seed}" / "metrics.json"  # a finished run is read back, not re-run
            if not done.is_file() and not run_missing:
                continue
            run = variant_config(config, declared, name, seed, config.data.data_dir)
            try:
                metrics = read_metrics(done) if done.is_file() else recipe.run(run, done.parent)
            except RunFolderBusy:  # another process runs it (several processes may share one ablation)
                print(f"[ablation] {name} seed {seed}: running in another process, left to it", flush=True)
                continue
            cells = recipe.ablation_cells(config, metrics)
            per_seed.setdefault(name, {})[seed] = cells
            for stratum, values in cells.items():
                slot = results.setdefault(name, {}).setdefault(stratum, {})
                for key in columns:
                    slot.setdefault(key, []).append(math.nan if values.get(key) is None else float(values[key]))
            if progress:
                overall = cells.get("overall", {})
                summary = ", ".join(f"{label} {overall.get(k, math.nan):.3f}" for k, label in columns.items())
                print(f"[ablation] {name} seed {seed}: {summary}", flush=True)
    if not is_global_zero():
        return results
    claims = claim_results(recipe.spec.claims, per_seed)
    document = {**results, "claims": claims}
    (root / "ablation.json").write_text(strict_json(document, indent=2))
    (root / "ablation.md").write_text(ablation_table(recipe, config, results, declared, seeds, claims))
    plot_variant_dots(  # every variant in results is declared: variant_config checked them all
        {declared[n].label: {s: r[s][first] for s in strata_order(r) if first in r[s]} for n, r in results.items()},
        root / "ablation.png",
        title=f"{recipe.name}: test {columns[first]} per seed, overall and per stratum",
        ylabel=columns[first],
    )
    recipe.ablation_plots(config, results, root)
    return results


def ablation_table(
    recipe: Any,
    config: Any,
    results: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    declared: Mapping[str, Variant],
    seeds: Sequence[int],
    claims: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Markdown: the claims (paired differences), the variants' cells (mean ± std over seeds), per stratum too."""
    columns = recipe.ablation_columns(config)
    first = next(iter(columns))
    n = len(seeds)
    d = config.data
    lines = [
        f"# {recipe.name} ablation",
        "",
        f"Dataset `{d.dataset}` ({d.num_images} images, {d.image_size} px{_extra(d)}), preset `{config.preset}`; "
        f"mean ± std over seeds {list(seeds)}. {recipe.ablation_notes(config)}".rstrip(),
        "",
    ]
    if claims:
        lines += [
            "## The paper's claims, paired by seed",
            "",
            "| claim | comparison | metric (stratum) | pairs | mean difference [95 % CI] | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for c in claims:
            low, mean, high = (f"{v:+.3f}" if math.isfinite(v) else "n/a" for v in (c["low"], c["mean"], c["high"]))
            metric = f"{columns.get(c['metric'], c['metric'])} ({c['stratum']})"
            comparison = f"{c['statement']} | {c['variant']} vs {c['reference']} | {metric} | {c['pairs']}"
            lines.append(f"| {comparison} | {mean} [{low}, {high}] | {c['verdict']} |")
        lines += ["", "## Variants", ""]
    lines += ["| variant | " + " | ".join(columns.values()) + " |", "|---|" + "---|" * len(columns)]
    label = {name: declared[name].label if name in declared else name for name in results}
    for name, strata in results.items():
        overall = strata.get("overall", {})
        lines.append(f"| {label[name]} | " + " | ".join(mean_std(overall.get(k, []), n) for k in columns) + " |")
    strata_names = [s for s in strata_order(s for strata in results.values() for s in strata) if s != "overall"]
    for key in columns:  # one table per metric the strata have (the first one always, when there are strata)
        values = [v for strata in results.values() for s in strata_names for v in strata.get(s, {}).get(key, [])]
        present = any(math.isfinite(v) for v in values)
        if not strata_names or (key != first and not present):
            continue
        lines += [
            "",
            f"## {columns[key]} per stratum",
            "",
            "| variant | " + " | ".join(strata_names) + " |",
            "|---|" + "---|" * len(strata_names),
        ]
        for name, strata in results.items():
            cells = [mean_std(strata.get(s, {}).get(key, []), n) for s in strata_names]
            lines.append(f"| {label[name]} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{reproduce_command(recipe, config, seeds, list(results))}`."]
    return "\n".join(lines) + "\n"


def _extra(data: Any) -> str:
    """The header's ", plus N test-only images" where the data config adds them (``data.extra_test_images``)."""
    extra = getattr(data, "extra_test_images", 0)
    return f", plus {extra:,} test-only images" if extra else ""


def reproduce_command(recipe: Any, config: Any, seeds: Sequence[int], variants: Sequence[str]) -> str:
    """The ``qualcl run NAME --ablation`` command that makes a table of ``variants`` over ``seeds``.

    It names the preset, the dataset, the variants and every ``--set`` by which ``config`` differs
    from its preset (the seed and the trainer's options aside).
    """
    import yaml

    from qualcl.recipes.claims import flat_config
    from qualcl.recipes.config import config_to_dict

    preset = recipe.spec.config(config.preset, dataset=config.data.dataset)
    ours, theirs = flat_config(config_to_dict(config), ()), flat_config(config_to_dict(preset), ())
    changed = [k for k in sorted(ours) if ours[k] != theirs.get(k) and k != "seed" and not k.startswith("trainer.")]
    options = [] if config.preset == "default" else [f"--preset {config.preset}"]
    if config.data.dataset != recipe.spec.config(config.preset).data.dataset:
        options.append(f"--dataset {config.data.dataset}")
    options.append(f"--seeds {','.join(map(str, seeds))}")
    if list(variants) != list(recipe.spec.ablations):
        options.append(f"--variants {','.join(variants)}")
    for key in changed:
        value = yaml.safe_dump(ours[key], default_flow_style=True).strip().removesuffix("...").strip()
        options.append(f"--set {shlex.quote(f'{key}={value}')}")
    return f"qualcl run {recipe.name} --ablation " + " ".join(options)
