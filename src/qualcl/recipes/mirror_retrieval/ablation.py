"""Mirror-retrieval ablation: descriptor, loss, mirror attention and heads, over several seeds."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qualcl.recipes.ablation import ablation_plan, mean_std, quality_rank, run_variants
from qualcl.recipes.driver import is_global_zero
from qualcl.recipes.mirror_retrieval.config import ABLATIONS, MirrorRetrievalConfig
from qualcl.recipes.mirror_retrieval.recipe import run_mirror_retrieval
from qualcl.recipes.plots import plot_variant_dots

__all__ = ["DESCRIPTIONS", "ablation_table", "run_ablation", "table_metrics", "variant_config"]

DESCRIPTIONS = {
    "gem_triplet": "GeM + triplet (PML TripletMarginLoss, batch-hard)",
    "gem_circle": "GeM + circle loss",
    "ma_official": "+ mirror attention (official)",
    "ma_intended": "+ mirror attention (intended)",
    "fine_triplet": "+ fine triplet loss (relevance-weighted positives)",
    "fine_triplet_recon": "+ mirror reconstruction (full method)",
    "public_bce": "public code's training (official block, random flips, BCE only)",
}


_quality_rank = quality_rank


def table_metrics(k: int) -> dict[str, str]:
    """Columns of the ablation table: ``{metric key: heading}`` for cut-off ``k``."""
    return {
        f"map@{k}": f"mAP@{k}",
        f"precision@{k}": f"P@{k}",
        f"ndcg@{k}": f"NDCG@{k}",
        "map@r": "mAP@R",
        f"map_legacy@{k}": f"legacy mAP@{k}",
    }


def variant_config(
    config: MirrorRetrievalConfig, name: str, seed: int, data_dir: str | None = None
) -> MirrorRetrievalConfig:
    """``config`` with variant ``name``'s model and training overrides, seed ``seed``, no progress bars."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation variant {name!r}; known: {list(ABLATIONS)}")
    changes = ABLATIONS[name]
    model = dataclasses.replace(config.model, **changes.get("model", {}))
    train = dataclasses.replace(config.train, **changes.get("train", {}))
    data = config.data if data_dir is None else dataclasses.replace(config.data, data_dir=data_dir)
    trainer = dataclasses.replace(config.trainer, progress=False)
    return dataclasses.replace(config, seed=seed, model=model, train=train, data=data, trainer=trainer)


def run_ablation(
    config: MirrorRetrievalConfig,
    out: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] | None = None,
    progress: bool = True,
    run_missing: bool = True,
) -> dict[str, Any]:
    """Run every variant for every seed (resumable), then write ``ablation.md``, ``ablation.json`` and a dot plot.

    All variants share one synthetic dataset (``out/data``); each run lives in ``out/<variant>/seed<k>``
    and is skipped when finished.

    Returns:
        ``{variant: {stratum: {metric: [one value per seed]}}}`` with strata ``overall``, each query
        grade and each query quality level.
    """
    root, names, data_dir = ablation_plan(
        out,
        list(ABLATIONS) if variants is None else list(variants),
        lambda name: variant_config(config, name, 0),
        config.data,
    )
    k = config.eval.k

    def run(name: str, seed: int, folder: Path) -> dict[str, Any]:
        return run_mirror_retrieval(variant_config(config, name, seed, data_dir), folder)

    def summarise(metrics: dict[str, Any]) -> str:
        o = metrics["test"]["overall"]
        return f"mAP@{k} {o[f'map@{k}']:.3f}, P@{k} {o[f'precision@{k}']:.3f}, mAP@R {o['map@r']:.3f}"

    raw = run_variants(root, names, seeds, run, summarise, progress=progress, run_missing=run_missing)
    results: dict[str, Any] = {}
    for name, by_seed in raw.items():
        strata: dict[str, dict[str, list[float]]] = {}
        for metrics in by_seed.values():
            test = metrics["test"]
            quality = sorted(test["by_quality"], key=_quality_rank)  # stored runs may hold them sorted by name
            rows = {"overall": test["overall"], **test["by_grade"], **{q: test["by_quality"][q] for q in quality}}
            for stratum, values in rows.items():
                slot = strata.setdefault(stratum, {})
                for key in table_metrics(k):
                    slot.setdefault(key, []).append(float(values.get(key, float("nan"))))
        results[name] = strata
    if not is_global_zero():
        return results
    (root / "ablation.json").write_text(json.dumps(results, indent=2))
    (root / "ablation.md").write_text(ablation_table(results, config, seeds))
    levels = ["overall", *(s for s in next(iter(results.values()), {}) if not s.startswith("grade "))]
    levels = list(dict.fromkeys(levels))
    plot_variant_dots(
        {DESCRIPTIONS.get(n, n): {s: r[s][f"map@{k}"] for s in levels if s in r} for n, r in results.items()},
        root / "ablation_map.png",
        title=f"Test mAP@{k} per seed: all queries and per query quality level",
        ylabel=f"mAP@{k}",
    )
    return results


def ablation_table(results: dict[str, Any], config: MirrorRetrievalConfig, seeds: Sequence[int]) -> str:
    """Markdown: the variants overall, then mAP@k per query grade and per query quality level."""
    d, k, n = config.data, config.eval.k, len(seeds)
    columns = table_metrics(k)
    lines = [
        "# Mirror-retrieval ablation",
        "",
        f"Dataset `{d.dataset}` ({d.num_images} images, {d.image_size} px), encoder `{config.model.encoder}`, "
        f"preset `{config.preset}`, {config.train.epochs} epochs; mean ± std over seeds {list(seeds)}. "
        "Database = training + validation images, queries = test images; relevance = same DR grade. "
        f"mAP@{k} divides by the relevant items retrieved; legacy mAP@{k} is the public FundusDR code's "
        f"(divides by {k}). The paper publishes no numbers (only its abstract is public).",
        "",
        "| variant | " + " | ".join(columns.values()) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, strata in results.items():
        overall = strata["overall"]
        cells = [mean_std(overall.get(key, []), n) for key in columns]
        lines.append(f"| {DESCRIPTIONS.get(name, name)} | " + " | ".join(cells) + " |")
    first: dict[str, Any] = next(iter(results.values()), {})
    strata_names = [s for s in first if s != "overall"]
    if strata_names:
        lines += [
            "",
            f"## mAP@{k} per query grade and per query quality level",
            "",
            "| variant | " + " | ".join(strata_names) + " |",
            "|---|" + "---|" * len(strata_names),
        ]
        for name, strata in results.items():
            cells = [mean_std(strata.get(s, {}).get(f"map@{k}", []), n) for s in strata_names]
            lines.append(f"| {DESCRIPTIONS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
