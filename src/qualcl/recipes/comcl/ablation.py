"""CoMCL ablations (paper Tables 2–3) over several seeds, written as a markdown table beside the paper's."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qualcl.recipes.ablation import ablation_plan, mean_std, run_variants
from qualcl.recipes.comcl.config import ABLATIONS, ComclConfig, headline_metric
from qualcl.recipes.comcl.probe import probe_run
from qualcl.recipes.comcl.recipe import METRIC_NAMES, load_datasets, run_comcl
from qualcl.recipes.driver import is_global_zero
from qualcl.recipes.plots import plot_variant_dots

__all__ = ["PAPER_TABLES", "ablation_table", "run_ablation"]

#: The paper's EyeQ figures as (Kappa, ACC); Table 2 prints them as "ACC, Kappa" but they equal
#: Table 1's "Kappa, ACC" columns, so we read them as Kappa first (docs/comcl.md, "Decisions").
PAPER_TABLES: dict[str, tuple[float, float]] = {
    "baseline": (0.804, 0.783),
    "basic_cl": (0.842, 0.827),
    "wo_multi_level": (0.859, 0.836),
    "wo_spl": (0.868, 0.860),
    "comcl": (0.884, 0.872),
    "v1_L_LQL": (0.846, 0.835),
    "v2_L_LQL_H": (0.867, 0.856),
}
#: Chest X-ray at its original 43.2 % LQ (Table 1 only: ResNet-50 baseline and CoMCL).
PAPER_TABLES_CXR: dict[str, tuple[float, float]] = {"baseline": (0.619, 0.626), "comcl": (0.682, 0.708)}
DESCRIPTIONS = {
    "baseline": "Baseline (no pre-training)",
    "basic_cl": "Basic CL (SimCLR NT-Xent on patches)",
    "wo_multi_level": "CoMCL w/o multi-level (lesion vs healthy)",
    "wo_spl": "CoMCL w/o SPL (no hard-negative mining)",
    "comcl": "CoMCL (full) = v3 {L, LQ_L, H, LQ_H}",
    "v1_L_LQL": "CoMCL v1 {L, LQ_L}",
    "v2_L_LQL_H": "CoMCL v2 {L, LQ_L, H}",
    "spl_literal": "CoMCL with the printed SPL threshold 1/K_t",
}


def _variant(config: ComclConfig, name: str, seed: int, data_dir: str | None) -> ComclConfig:
    pretrain = dataclasses.replace(config.pretrain, **ABLATIONS[name])  # type: ignore[arg-type]
    data = dataclasses.replace(config.data, data_dir=data_dir) if data_dir else config.data
    trainer = dataclasses.replace(config.trainer, progress=False)
    return dataclasses.replace(config, seed=seed, pretrain=pretrain, data=data, trainer=trainer)


def run_ablation(
    config: ComclConfig,
    out: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] | None = None,
    progress: bool = True,
    run_missing: bool = True,
    probe: bool = True,
) -> dict[str, Any]:
    """Run every ablation variant for every seed (resumable), then write ``ablation.md``, ``.json`` and ``.png``.

    All variants share one synthetic dataset (generated into ``out/data``), so only training
    differs. Each run lives in ``out/<variant>/seed<k>`` and is skipped when already finished.

    Args:
        config: Base configuration (its ``pretrain`` section is overridden per variant).
        out: Folder of the ablation.
        seeds: Training seeds.
        variants: Subset of ``ABLATIONS`` (default: all).
        progress: Print one line per finished run.
        run_missing: ``False`` trains nothing and tabulates the finished runs only.
        probe: Also diagnose each run's frozen pre-trained encoder
            (:func:`~qualcl.recipes.comcl.probe.probe_run`, cached per run): a linear probe of the
            class (``"probe"``) and of low vs high quality (``"probe_lq"``), and the features'
            effective rank and within/between-level cosines (``"geometry"``). They separate what
            pre-training learned from fine-tuning's seed noise; ``ablation.md`` gets a second table.

    Returns:
        ``{variant: {setting: {metric: [...], "accuracy": [...]}}}`` with ``metric`` the run's
        :func:`~qualcl.recipes.comcl.config.headline_metric` (``"qwk"``, or ``"kappa"`` for X-rays);
        with ``probe``, also ``"probe"``, ``"probe_lq"`` and ``"geometry"`` (``{name: [...]}``).
    """
    unknown = [n for n in (variants or ()) if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {unknown}; known: {list(ABLATIONS)}")
    root, names, data_dir = ablation_plan(
        out, list(ABLATIONS) if variants is None else list(variants), lambda name: None, config.data
    )

    def run(name: str, seed: int, folder: Path) -> dict[str, Any]:
        return run_comcl(_variant(config, name, seed, data_dir), folder)

    metric = headline_metric(config)

    def summarise(metrics: dict[str, Any]) -> str:
        original = metrics["test"]["original"]["overall"]
        return f"{METRIC_NAMES[metric]} {original[metric]:.3f}, ACC {original['accuracy']:.3f}"

    finished = run_variants(root, names, seeds, run, summarise, progress=progress, run_missing=run_missing)
    data = None
    if probe and finished:
        variant = _variant(config, names[0], seeds[0], data_dir)
        synthetic = Path(data_dir) if variant.data.dataset == "synthetic" and data_dir else None
        data = load_datasets(variant, synthetic)
    results: dict[str, Any] = {}
    for name, by_seed in finished.items():
        per_setting: dict[str, dict[str, list[float]]] = {}
        for seed, metrics in by_seed.items():
            settings = dict(metrics["test"])
            if data is not None:
                probes = probe_run(root / name / f"seed{seed}", *data)
                settings["probe"] = probes["grade"]
                settings["probe_lq"] = {"overall": probes["low_quality"]}
                geometry = per_setting.setdefault("geometry", {})
                for key, value in probes["geometry"].items():
                    geometry.setdefault(key, []).append(value)
            for setting, values in settings.items():
                slot = per_setting.setdefault(setting, {metric: [], "accuracy": []})
                slot[metric].append(values["overall"][metric])
                slot["accuracy"].append(values["overall"]["accuracy"])
        results[name] = per_setting
    if not is_global_zero():  # under DDP every rank trained the runs; one writes the tables
        return results
    (root / "ablation.json").write_text(json.dumps(results, indent=2))
    (root / "ablation.md").write_text(ablation_table(results, config, seeds))
    if results:
        plot_variant_dots(
            {
                DESCRIPTIONS.get(n, n): {s: per[s][metric] for s in ("original", "lq_100", "probe") if s in per}
                for n, per in results.items()
            },
            root / "ablation.png",
            title=f"CoMCL ablation: test {METRIC_NAMES[metric]} per seed (bars: means)",
            ylabel=METRIC_NAMES[metric],
        )
    return results


def ablation_table(results: dict[str, Any], config: ComclConfig, seeds: Sequence[int]) -> str:
    """Markdown table: mean ± std of kappa and accuracy per variant and LQ ratio, with the paper's figures."""
    metric = headline_metric(config)
    label = METRIC_NAMES[metric]
    cxr = config.data.dataset == "nih-cxr14"
    paper_tables = PAPER_TABLES_CXR if cxr else PAPER_TABLES
    diagnostics = ("probe", "probe_lq", "geometry")
    settings = [s for s in next(iter(results.values())).keys() if s not in diagnostics] if results else []
    # metrics.json stores settings sorted by name: put the original test set first, then rising LQ ratios
    settings.sort(key=lambda s: (s != "original", float(s[3:]) if s[3:].isdigit() else 0.0))
    header = (
        "| variant | "
        + " | ".join(f"{label} {s} | ACC {s}" for s in settings)
        + f" | paper Kappa / ACC ({'Chest X-ray' if cxr else 'EyeQ'}) |"
    )
    rule = "|---|" + "---|---|" * len(settings) + "---|"
    data = config.data
    if data.dataset == "synthetic":
        count = f"{data.num_images} images, "
    else:
        count = f"at most {data.max_images} images per split, " if data.max_images else ""
    lines = [
        "# CoMCL ablation",
        "",
        f"Dataset `{data.dataset}` ({count}{data.image_size} px), "
        f"backbone `{config.backbone}`, preset `{config.preset}`, {config.pretrain.steps} pre-training steps, "
        f"{config.finetune.epochs} fine-tuning epochs; mean ± std over seeds {list(seeds)}. "
        "`original` is the test set as generated; `lq_70` / `lq_100` raise its low-quality ratio by "
        "degrading Good images. "
        + (
            "Paper figures are Chest X-ray at its original 43.2 % LQ (Table 1: ResNet-50 and CoMCL only)"
            if cxr
            else "Paper figures are EyeQ at its original 33.4 % LQ (Tables 2–3)"
        )
        + ", for reference only: the data, resolution and backbone differ.",
        "",
        header,
        rule,
    ]
    for name, per_setting in results.items():
        cells = " | ".join(
            f"{mean_std(per_setting[s][metric], len(seeds))} | {mean_std(per_setting[s]['accuracy'], len(seeds))}"
            for s in settings
        )
        paper = paper_tables.get(name)
        paper_cell = f"{paper[0]:.3f} / {paper[1]:.3f}" if paper else "—"
        lines.append(f"| {DESCRIPTIONS.get(name, name)} | {cells} | {paper_cell} |")
    if any("probe" in per for per in results.values()):
        lines += _diagnostics_table(results, label, metric, len(seeds))
    return "\n".join(lines) + "\n"


def _diagnostics_table(results: dict[str, Any], label: str, metric: str, seeds: int) -> list[str]:
    lines = [
        "",
        "## The frozen pre-trained encoders",
        "",
        "Linear probes (logistic regression on the frozen encoder's whole-image features, fitted on the "
        "training images, scored on the original test set; the baseline's encoder is its random init) of the "
        "class and of low vs high quality, and the geometry of the test features by CoMCL level: effective "
        "rank of the centred features (of 512) and mean cosine between images of the same / of different levels.",
        "",
        f"| variant | probe {label} | probe ACC | LQ-probe kappa | LQ-probe ACC | effective rank "
        "| cosine within level | cosine between levels |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, per in results.items():
        if "probe" not in per:
            continue
        geometry = per.get("geometry", {})
        cells = [
            mean_std(per["probe"][metric], seeds),
            mean_std(per["probe"]["accuracy"], seeds),
            mean_std(per["probe_lq"][metric], seeds),
            mean_std(per["probe_lq"]["accuracy"], seeds),
            *(
                mean_std(geometry.get(k, []), seeds)
                for k in ("effective_rank", "within_level_cosine", "between_level_cosine")
            ),
        ]
        lines.append(f"| {DESCRIPTIONS.get(name, name)} | " + " | ".join(cells) + " |")
    return lines
