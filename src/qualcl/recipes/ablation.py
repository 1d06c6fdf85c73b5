"""The one ablation runner: variants declared beside the presets, run over seeds, resumed, collected, tabulated.

A recipe declares its variants in its spec (``RecipeSpec.ablations``: ``{name: Variant(label,
overrides)}``, the overrides in ``--set`` form) and says which cells of a run's ``metrics.json`` the
tables show (:meth:`~qualcl.recipes.driver.Recipe.ablation_cells` and ``ablation_columns``);
:func:`run_ablation` does the rest for every recipe: ``qualcl run NAME --ablation``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qualcl.recipes.config import Variant, apply_overrides, did_you_mean
from qualcl.recipes.run_folder import read_metrics

__all__ = [
    "ablation_plan",
    "ablation_table",
    "mean_std",
    "quality_rank",
    "run_ablation",
    "run_variants",
    "strata_order",
    "variant_config",
]


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


def mean_std(values: Sequence[float], expected: int | None = None) -> str:
    """``"0.123 ± 0.004"`` (sample std) of the finite ``values``; ``"n/a"`` when there are none.

    When fewer than ``expected`` values are finite, the count is added: ``"0.600 ± 0.141 (n=2)"``.

    Examples:
        >>> mean_std([0.5, 0.7, float("nan")])
        '0.600 ± 0.141'
        >>> mean_std([0.5, 0.7], expected=3)
        '0.600 ± 0.141 (n=2)'
    """
    clean = [float(v) for v in values if math.isfinite(v)]
    if not clean:
        return "n/a"
    mean = sum(clean) / len(clean)
    std = math.sqrt(sum((v - mean) ** 2 for v in clean) / (len(clean) - 1)) if len(clean) > 1 else 0.0
    count = f" (n={len(clean)})" if expected is not None and len(clean) < expected else ""
    return f"{mean:.3f} ± {std:.3f}{count}"


def ablation_plan(
    out: str | Path, names: Iterable[str], check: Callable[[str], Any], data: Any
) -> tuple[Path, list[str], str | None]:
    """An ablation's folder, its variant names and the data folder all its runs share.

    Each name is checked first (``check(name)`` raises on an unknown variant or an impossible
    combination), so nothing trains before every variant is known to be valid. The runs share
    ``data.data_dir`` when it names a folder, else the synthetic set in the dataset cache
    (``None``: :func:`qualcl.data.synthetic.cached_fundus_dataset`).

    Args:
        out: Folder of the ablation.
        names: Variant names.
        check: Raises ``ValueError`` for a variant that cannot run.
        data: The recipe's data config (``dataset``, ``data_dir``).

    Examples:
        >>> from types import SimpleNamespace
        >>> data = SimpleNamespace(dataset="synthetic", data_dir=None)
        >>> plan = ablation_plan("abl", ["a", "b"], lambda name: None, data)
        >>> plan[1], plan[2]
        (['a', 'b'], None)
    """
    root = Path(out)
    chosen = list(names)
    for name in chosen:
        check(name)
    return root, chosen, data.data_dir


def run_variants(
    root: Path,
    names: Sequence[str],
    seeds: Sequence[int],
    run: Callable[[str, int, Path], dict[str, Any]],
    summarise: Callable[[dict[str, Any]], str],
    *,
    progress: bool = True,
    run_missing: bool = True,
) -> dict[str, dict[int, dict[str, Any]]]:
    """Run ``run(name, seed, folder)`` for every variant and seed unless ``folder/metrics.json`` exists.

    Each run lives in ``root/<name>/seed<k>``; a finished one is read back instead of re-run, so
    an interrupted ablation continues where it stopped. With ``run_missing=False`` nothing is
    trained: only the finished runs are collected (variants without any are left out).

    Args:
        root: Folder of the ablation.
        names: Variant names.
        seeds: Training seeds.
        run: Runs one variant with one seed into a folder and returns its metrics.
        summarise: One line about a run's metrics, printed when ``progress``.
        progress: Print a line per finished run.
        run_missing: Train the runs that are not finished yet.

    Returns:
        ``{name: {seed: metrics}}`` of the finished runs.
    """
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name in names:
        for seed in seeds:
            folder = root / name / f"seed{seed}"
            done = folder / "metrics.json"
            if not done.is_file() and not run_missing:
                continue
            metrics = read_metrics(done) if done.is_file() else run(name, seed, folder)
            results.setdefault(name, {})[seed] = metrics
            if progress:
                print(f"[ablation] {name} seed {seed}: {summarise(metrics)}", flush=True)
    return results


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
    :meth:`check`) before anything trains.

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

    declared: Mapping[str, Variant] = recipe.spec.ablations if recipe.spec is not None else {}
    if not declared:
        raise ValueError(f"recipe {recipe.name!r} declares no ablation")

    def check(name: str) -> None:
        recipe.check(variant_config(config, declared, name, seeds[0] if seeds else 0))

    root, names, data_dir = ablation_plan(
        out, list(declared) if variants is None else list(variants), check, config.data
    )
    columns = recipe.ablation_columns(config)
    first = next(iter(columns))

    def run(name: str, seed: int, folder: Path) -> dict[str, Any]:
        result: dict[str, Any] = recipe.run(variant_config(config, declared, name, seed, data_dir), folder)
        return result

    def summarise(metrics: dict[str, Any]) -> str:
        overall = recipe.ablation_cells(config, metrics).get("overall", {})
        return ", ".join(f"{label} {overall.get(key, float('nan')):.3f}" for key, label in columns.items())

    raw = run_variants(root, names, seeds, run, summarise, progress=progress, run_missing=run_missing)
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, by_seed in raw.items():
        strata: dict[str, dict[str, list[float]]] = {}
        for metrics in by_seed.values():
            for stratum, values in recipe.ablation_cells(config, metrics).items():
                slot = strata.setdefault(stratum, {})
                for key in columns:
                    value = values.get(key)
                    slot.setdefault(key, []).append(float("nan") if value is None else float(value))
        results[name] = strata
    if not is_global_zero():
        return results
    (root / "ablation.json").write_text(json.dumps(results, indent=2))
    (root / "ablation.md").write_text(ablation_table(recipe, config, results, declared, seeds))
    labels = {name: declared[name].label if name in declared else name for name in results}
    plot_variant_dots(
        {labels[n]: {s: cells[first] for s, cells in r.items() if first in cells} for n, r in results.items()},
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
) -> str:
    """Markdown: the variants' overall cells (mean ± std over seeds), then per stratum every metric the strata have."""
    columns = recipe.ablation_columns(config)
    first = next(iter(columns))
    n = len(seeds)
    d = config.data
    lines = [
        f"# {recipe.name} ablation",
        "",
        f"Dataset `{d.dataset}` ({d.num_images} images, {d.image_size} px), preset `{config.preset}`; "
        f"mean ± std over seeds {list(seeds)}. {recipe.ablation_notes(config)}".rstrip(),
        "",
        "| variant | " + " | ".join(columns.values()) + " |",
        "|---|" + "---|" * len(columns),
    ]
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
    lines += ["", "Command: `qualcl run " + recipe.name + " --ablation --seeds " + ",".join(map(str, seeds)) + "`."]
    return "\n".join(lines) + "\n"
