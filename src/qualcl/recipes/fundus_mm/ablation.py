"""Image–text baselines and ablation: CLIP, CoCa, MAE only, the paper's method and its parts, over several seeds."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qualcl.recipes.ablation import ablation_plan, mean_std, quality_rank, run_variants
from qualcl.recipes.driver import is_global_zero
from qualcl.recipes.fundus_mm.config import ABLATIONS, FundusMMConfig
from qualcl.recipes.fundus_mm.recipe import run_fundus_mm
from qualcl.recipes.plots import plot_variant_dots

__all__ = [
    "DESCRIPTIONS",
    "PAPER_TABLE",
    "ablation_table",
    "run_ablation",
    "run_metrics",
    "variant_config",
    "write_ablation",
]

DESCRIPTIONS = {
    "clip": "CLIP (contrastive only)",
    "coca": "CoCa (contrastive + autoregressive captioning)",
    "mae": "MAE only (no text objective: zero-shot and recall at chance by construction)",
    "full": "the paper's method (contrastive + masked image + masked caption, fusion)",
    "no_fusion": "− fusion",
    "no_mim": "− masked image modelling",
    "no_caption": "− captioning",
}
#: The paper's Table 1 (zero-shot ODIR acc %, few-shot FIVES acc %, fine-tuned APTOS kappa × 100).
PAPER_TABLE = {
    "clip": ("25.67", "42.33", "74.05"),
    "coca": ("33.56", "40", "74.96"),
    "full": ("36.24", "46.83", "85.07"),
}


def variant_config(config: FundusMMConfig, name: str, seed: int, data_dir: str | None = None) -> FundusMMConfig:
    """``config`` with variant ``name``'s model overrides, seed ``seed``, no progress bars."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation variant {name!r}; known: {list(ABLATIONS)}")
    model = dataclasses.replace(config.model, **ABLATIONS[name].get("model", {}))
    data = config.data if data_dir is None else dataclasses.replace(config.data, data_dir=data_dir)
    trainer = dataclasses.replace(config.trainer, progress=False)
    return dataclasses.replace(config, seed=seed, model=model, data=data, trainer=trainer)


def run_metrics(metrics: dict[str, Any], config: FundusMMConfig) -> dict[str, float]:
    """The table's numbers of one run: zero-shot, recall@10 (or the largest k), few-shot and fine-tuned."""
    test = metrics["test"]
    kappa = "qwk" if config.data.dataset in ("synthetic", "aptos") else "kappa"
    shots = f"{max(config.eval.shots)}_shot"
    k = max(config.eval.recall_k)
    few = test["few_shot"]["original"][shots]
    tuned = test["finetune"].get("original", {}).get("overall", {})
    nan = float("nan")
    out = {
        "zero_shot": test["zero_shot"]["original"]["overall"]["accuracy"],
        "i2t": test["recall"].get(f"i2t_r@{k}", nan),
        "t2i": test["recall"].get(f"t2i_r@{k}", nan),
        "prompt_head": few["prompt_head"]["overall"]["accuracy"]["mean"],
        "linear_probe": few["linear_probe"]["overall"]["accuracy"]["mean"],
        "finetune_acc": tuned.get("accuracy", nan),
        "finetune_kappa": tuned.get(kappa, nan),
    }
    for stratum, values in test["zero_shot"]["original"].items():
        if stratum != "overall":
            out[f"zero_shot/{stratum}"] = values["accuracy"]
    return {key: float(v) if v is not None else nan for key, v in out.items()}


def run_ablation(
    config: FundusMMConfig,
    out: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] | None = None,
    progress: bool = True,
    run_missing: bool = True,
) -> dict[str, dict[str, list[float]]]:
    """Run every variant for every seed (resumable), then write ``ablation.md``, ``ablation.json`` and a dot plot.

    All variants share one synthetic dataset (``out/data``); each run lives in ``out/<variant>/seed<k>``.

    Returns:
        ``{variant: {metric: [one value per seed]}}`` (:func:`run_metrics`' keys).
    """
    root, names, data_dir = ablation_plan(
        out,
        list(ABLATIONS) if variants is None else list(variants),
        lambda name: variant_config(config, name, 0),
        config.data,
    )

    def run(name: str, seed: int, folder: Path) -> dict[str, Any]:
        return run_fundus_mm(variant_config(config, name, seed, data_dir), folder)

    def summarise(metrics: dict[str, Any]) -> str:
        m = run_metrics(metrics, config)
        return f"zero-shot {m['zero_shot']:.3f}, I→T R@k {m['i2t']:.3f}, fine-tuned {m['finetune_acc']:.3f}"

    raw = run_variants(root, names, seeds, run, summarise, progress=progress, run_missing=run_missing)
    results: dict[str, dict[str, list[float]]] = {}
    for name, by_seed in raw.items():
        for metrics in by_seed.values():
            for key, value in run_metrics(metrics, config).items():
                results.setdefault(name, {}).setdefault(key, []).append(value)
    if is_global_zero():
        write_ablation(results, config, seeds, root)
    return results


def write_ablation(
    results: dict[str, dict[str, list[float]]], config: FundusMMConfig, seeds: Sequence[int], root: str | Path
) -> None:
    """Write ``ablation.json``, ``ablation.md`` (:func:`ablation_table`) and the zero-shot dot plot under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "ablation.json").write_text(json.dumps(results, indent=2))
    (root / "ablation.md").write_text(ablation_table(results, config, seeds))
    plot_variant_dots(
        {
            DESCRIPTIONS.get(n, n).split(" (")[0]: {
                s.removeprefix("zero_shot/") if s != "zero_shot" else "overall": v
                for s, v in r.items()
                if s.startswith("zero_shot")
            }
            for n, r in results.items()
        },
        root / "ablation_zero_shot.png",
        title="Zero-shot accuracy per seed: all test images and per quality level",
        ylabel="accuracy",
    )


def ablation_table(results: dict[str, dict[str, list[float]]], config: FundusMMConfig, seeds: Sequence[int]) -> str:
    """Markdown: every variant's numbers (mean ± std over seeds) beside the paper's Table 1."""
    d, n = config.data, len(seeds)
    k, shots = max(config.eval.recall_k), max(config.eval.shots)
    kappa = "QWK" if d.dataset in ("synthetic", "aptos") else "kappa"
    columns = {
        "zero_shot": "zero-shot acc",
        "i2t": f"I→T R@{k}",
        "t2i": f"T→I R@{k}",
        "prompt_head": f"{shots}-shot acc (prompt head)",
        "linear_probe": f"{shots}-shot acc (linear probe)",
        "finetune_acc": "fine-tuned acc",
        "finetune_kappa": f"fine-tuned {kappa}",
    }
    lines = [
        "# Image–text baselines and ablation",
        "",
        f"Dataset `{d.dataset}` ({d.num_images} images, {d.image_size} px), encoder `{config.model.encoder}`, "
        f"preset `{config.preset}`, {config.train.epochs} pre-training epochs; mean ± std over seeds "
        f"{list(seeds)}. The paper's Table 1 (zero-shot ODIR acc %, few-shot FIVES acc %, fine-tuned "
        "APTOS kappa × 100) is on other data and models; it is shown for the rows it has.",
        "",
        "| variant | " + " | ".join(columns.values()) + " | paper: zero-shot / few-shot / fine-tuned |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for name, values in results.items():
        cells = [mean_std(values.get(key, []), n) for key in columns]
        paper = " / ".join(PAPER_TABLE[name]) if name in PAPER_TABLE else "—"
        lines.append(f"| {DESCRIPTIONS.get(name, name)} | " + " | ".join(cells) + f" | {paper} |")
    strata = sorted(
        (key for key in next(iter(results.values()), {}) if key.startswith("zero_shot/")),
        key=lambda key: quality_rank(key.removeprefix("zero_shot/")),
    )
    if strata:
        lines += [
            "",
            "## Zero-shot accuracy per quality level",
            "",
            "| variant | " + " | ".join(s.removeprefix("zero_shot/") for s in strata) + " |",
            "|---|" + "---|" * len(strata),
        ]
        for name, values in results.items():
            cells = [mean_std([v for v in values.get(s, []) if not math.isnan(v)], n) for s in strata]
            lines.append(f"| {DESCRIPTIONS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
