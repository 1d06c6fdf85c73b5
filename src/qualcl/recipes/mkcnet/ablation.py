"""MKCNet ablations (paper Fig. 4–6) and the training low-quality-ratio sweep (Fig. 5), over several seeds."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qualcl.recipes.ablation import ablation_plan, mean_std, run_variants
from qualcl.recipes.driver import is_global_zero
from qualcl.recipes.mkcnet.config import ABLATIONS, LQ_SWEEP, MkcnetConfig
from qualcl.recipes.mkcnet.recipe import run_mkcnet
from qualcl.recipes.plots import plot_curves

__all__ = ["DESCRIPTIONS", "PAPER_EYEQ", "ablation_table", "ablation_variants", "run_ablation", "variant_config"]

#: The paper's EyeQ row of Table 2 (AUC / ACC / F1, %), for reference: its ablations are plots only.
PAPER_EYEQ: dict[str, tuple[float, float, float]] = {"mkcnet": (83.83, 78.01, 59.68)}

DESCRIPTIONS = {
    "vanilla": "Vanilla (backbone + diagnosis head)",
    "multitask": "+ quality head (plain multi-task)",
    "wo_meta": "MKCNet w/o Meta (f^q assists through the MAB)",
    "wo_mab": "MKCNet w/o MAB (diagnosis on f^d alone)",
    "mkcnet_fc": "MKCNet-FC (GABs replaced by FC layers)",
    "mkcnet_con": "MKCNet-Con (f^ω concatenated, not gated)",
    "mask_quality": "masking by quality only",
    "mask_diagnosis": "masking by diagnosis only",
    "mkcnet": "MKCNet (joint-encoding masking)",
}

_SWEEP_BASES = ("vanilla", "mkcnet")


def _sweep_name(base: str, fraction: float) -> str:
    return f"{base}@lq{round(100 * fraction)}"


def ablation_variants(lq_sweep: bool = True) -> list[str]:
    """Every variant name: the components of :data:`ABLATIONS`, then the sweep ``vanilla@lq0`` … ``mkcnet@lq75``."""
    names = list(ABLATIONS)
    if lq_sweep:
        names += [_sweep_name(b, f) for f in LQ_SWEEP if f < 1.0 for b in _SWEEP_BASES]
    return names


def variant_config(config: MkcnetConfig, name: str, seed: int, data_dir: str | None = None) -> MkcnetConfig:
    """``config`` with variant ``name``'s model overrides (and, for ``base@lqXX``, the kept LQ share)."""
    base, _, sweep = name.partition("@lq")
    if base not in ABLATIONS or (sweep and not sweep.isdigit()):
        raise ValueError(f"unknown ablation variant {name!r}; known: {ablation_variants()}")
    model = dataclasses.replace(config.model, **ABLATIONS[base])  # type: ignore[arg-type]
    data = config.data
    if sweep:
        data = dataclasses.replace(data, train_lq_fraction=int(sweep) / 100)
    if data_dir is not None:
        data = dataclasses.replace(data, data_dir=data_dir)
    trainer = dataclasses.replace(config.trainer, progress=False)
    return dataclasses.replace(config, seed=seed, model=model, data=data, trainer=trainer)


def run_ablation(
    config: MkcnetConfig,
    out: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] | None = None,
    progress: bool = True,
    run_missing: bool = True,
) -> dict[str, Any]:
    """Run every variant for every seed (resumable), then write ``ablation.md`` and ``ablation.json``.

    All variants share one synthetic dataset (generated into ``out/data``). Each run lives in
    ``out/<variant>/seed<k>`` and is skipped when finished.

    Args:
        config: Base configuration.
        out: Folder of the ablation.
        seeds: Training seeds.
        variants: Subset of :func:`ablation_variants` (default: all, with the LQ sweep).
        progress: Print one line per finished run.
        run_missing: ``False`` trains nothing and tabulates the finished runs only (cells with fewer
            seeds than asked say how many).

    Returns:
        ``{variant: {stratum: {metric: [one value per seed]}}}``.
    """
    root, names, data_dir = ablation_plan(
        out,
        ablation_variants() if variants is None else list(variants),
        lambda name: variant_config(config, name, 0),
        config.data,
    )

    def run(name: str, seed: int, folder: Path) -> dict[str, Any]:
        return run_mkcnet(variant_config(config, name, seed, data_dir), folder)

    def summarise(metrics: dict[str, Any]) -> str:
        o = metrics["test"]["overall"]
        return f"AUC {o['auc']:.3f}, ACC {o['accuracy']:.3f}, F1 {o['macro_f1']:.3f}"

    raw = run_variants(root, names, seeds, run, summarise, progress=progress, run_missing=run_missing)
    results: dict[str, Any] = {}
    for name, by_seed in raw.items():
        strata: dict[str, dict[str, list[float]]] = {}
        for metrics in by_seed.values():
            for stratum, values in metrics["test"].items():
                slot = strata.setdefault(stratum, {})
                for key in ("auc", "accuracy", "macro_f1"):
                    slot.setdefault(key, []).append(values[key])
        results[name] = strata
    if not is_global_zero():  # under DDP every rank trained the runs; one writes the tables
        return results
    (root / "ablation.json").write_text(json.dumps(results, indent=2))
    (root / "ablation.md").write_text(ablation_table(results, config, seeds))
    _plot_sweep(results, root / "ablation_lq_sweep.png")
    return results


def _plot_sweep(results: dict[str, Any], path: Path) -> None:
    """Mean test AUC against the share of training LQ images kept, Vanilla and MKCNet (paper Fig. 5)."""
    series = {}
    for base in _SWEEP_BASES:
        points = []
        for fraction in LQ_SWEEP:
            name = base if fraction == 1.0 else _sweep_name(base, fraction)
            values = [v for v in results.get(name, {}).get("overall", {}).get("auc", []) if v == v]
            if values:
                points.append((100 * fraction, sum(values) / len(values)))
        if len(points) >= 2:
            series[DESCRIPTIONS[base].split(" (")[0]] = ([x for x, _ in points], [y for _, y in points])
    if series:
        plot_curves(series, path, title="Test AUC vs LQ images used in training", xlabel="% of LQ kept", ylabel="AUC")


def ablation_table(results: dict[str, Any], config: MkcnetConfig, seeds: Sequence[int]) -> str:
    """Markdown: the component / masking table and the LQ-ratio sweep, mean ± std over seeds."""
    d = config.data
    lines = [
        "# MKCNet ablation",
        "",
        f"Dataset `{d.dataset}` ({d.num_images} images, {d.image_size} px), backbone `{config.model.backbone}`, "
        f"preset `{config.preset}`, {config.train.epochs} epochs; mean ± std over seeds {list(seeds)}. "
        "Test-set AUC (one-vs-one on probabilities), accuracy and macro F1 overall, and AUC on the "
        "low-quality test images alone (paper Fig. 6 top). The paper shows its ablations only as plots "
        "(Fig. 4–6: every variant below full MKCNet); its EyeQ Table 2 row is given for reference — "
        "data, resolution and backbone differ.",
        "",
        "| variant | AUC | ACC | macro F1 | AUC (LQ images) | paper EyeQ AUC / ACC / F1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, strata in results.items():
        if "@lq" in name:
            continue
        overall, low = strata["overall"], strata.get("low_quality", {"auc": []})
        paper = PAPER_EYEQ.get(name)
        paper_cell = " / ".join(f"{v / 100:.3f}" for v in paper) if paper else "—"
        n = len(seeds)
        lines.append(
            f"| {DESCRIPTIONS.get(name, name)} | {mean_std(overall['auc'], n)} | {mean_std(overall['accuracy'], n)} | "
            f"{mean_std(overall['macro_f1'], n)} | {mean_std(low['auc'], n)} | {paper_cell} |"
        )
    sweep = [n for n in results if "@lq" in n]
    if sweep:
        lines += [
            "",
            "## Share of the training LQ images kept (all HQ images kept; paper Fig. 5)",
            "",
            "| LQ kept | Vanilla AUC | MKCNet AUC | Vanilla AUC (LQ images) | MKCNet AUC (LQ images) |",
            "|---|---|---|---|---|",
        ]
        for fraction in LQ_SWEEP:
            cells = []
            for stratum in ("overall", "low_quality"):
                for base in _SWEEP_BASES:
                    name = base if fraction == 1.0 else _sweep_name(base, fraction)
                    values = results.get(name, {}).get(stratum, {}).get("auc", [])
                    cells.append(mean_std(values, len(seeds)) if name in results else "—")
            lines.append(f"| {fraction:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
