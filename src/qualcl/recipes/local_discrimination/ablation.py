"""Local-discrimination baselines: random init, SimCLR, dense InfoNCE, LD stage 1, full LD, over several seeds."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qualcl.recipes.ablation import ablation_plan, mean_std, quality_rank, run_variants
from qualcl.recipes.driver import is_global_zero
from qualcl.recipes.local_discrimination.config import ABLATIONS, LocalDiscriminationConfig
from qualcl.recipes.local_discrimination.recipe import run_local_discrimination
from qualcl.recipes.plots import plot_variant_dots

__all__ = ["DESCRIPTIONS", "ablation_table", "run_ablation", "run_metrics", "variant_config"]

DESCRIPTIONS = {
    "random": "random initialisation",
    "simclr": "SimCLR (image-level NT-Xent)",
    "dense": "dense InfoNCE (DenseCL-style, known correspondence)",
    "ld_stage1": "LD stage 1 (patch discrimination + mixup)",
    "ld": "LD (+ region discrimination, entropy)",
}


def variant_config(
    config: LocalDiscriminationConfig, name: str, seed: int, data_dir: str | None = None
) -> LocalDiscriminationConfig:
    """``config`` with variant ``name``'s overrides, seed ``seed``, no progress bars."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation variant {name!r}; known: {list(ABLATIONS)}")
    changes = ABLATIONS[name]
    pretrain = dataclasses.replace(config.pretrain, **changes.get("pretrain", {}))
    shape = dataclasses.replace(config.shape, **changes.get("shape", {}))
    data = config.data if data_dir is None else dataclasses.replace(config.data, data_dir=data_dir)
    trainer = dataclasses.replace(config.trainer, progress=False)
    return dataclasses.replace(config, seed=seed, pretrain=pretrain, shape=shape, data=data, trainer=trainer)


def run_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of one run: Dice per task, phase and stratum (``"<task>/<phase>/<stratum>"``), landmark MRE."""
    out: dict[str, float] = {}
    test = metrics["test"]
    for task, phases in test["segmentation"].items():
        for phase, strata in phases.items():
            for stratum, values in strata.items():
                out[f"{task}/{phase}/{stratum}"] = float(values["dice"])
    for name, strata in test.get("landmarks", {}).items():
        for stratum, values in strata.items():
            out[f"{name}_mre/{stratum}"] = float(values["mre"])
    return out


def run_ablation(
    config: LocalDiscriminationConfig,
    out: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] | None = None,
    progress: bool = True,
    run_missing: bool = True,
) -> dict[str, dict[str, list[float]]]:
    """Run every baseline for every seed (resumable), then write ``ablation.md``, ``ablation.json`` and a plot.

    All variants share one synthetic dataset (``out/data``); each run lives in ``out/<variant>/seed<k>``.

    Returns:
        ``{variant: {metric: [one value per seed]}}`` (keys of :func:`run_metrics`).
    """
    root, names, data_dir = ablation_plan(
        out,
        list(ABLATIONS) if variants is None else list(variants),
        lambda name: variant_config(config, name, 0),
        config.data,
    )

    def run(name: str, seed: int, folder: Path) -> dict[str, Any]:
        return run_local_discrimination(variant_config(config, name, seed, data_dir), folder)

    def summarise(metrics: dict[str, Any]) -> str:
        values = run_metrics(metrics)
        shown = [f"{k.split('/')[0]} {v:.3f}" for k, v in values.items() if k.endswith("finetuned/overall")]
        return ", ".join(shown) or ", ".join(f"{k} {v:.3f}" for k, v in values.items() if k.endswith("/overall"))

    raw = run_variants(root, names, seeds, run, summarise, progress=progress, run_missing=run_missing)
    results: dict[str, dict[str, list[float]]] = {}
    for name, by_seed in raw.items():
        slot: dict[str, list[float]] = {}
        for metrics in by_seed.values():
            for key, value in run_metrics(metrics).items():
                slot.setdefault(key, []).append(value)
        results[name] = slot
    if not is_global_zero():
        return results
    (root / "ablation.json").write_text(json.dumps(results, indent=2))
    (root / "ablation.md").write_text(ablation_table(results, config, seeds))
    phase = "finetuned" if config.transfer.finetune_epochs else "frozen"
    first = next(iter(results.values()), {})
    tasks = list(dict.fromkeys(k.split("/")[0] for k in first if k.count("/") == 2))
    plot_variant_dots(
        {DESCRIPTIONS.get(n, n): {t: r.get(f"{t}/{phase}/overall", []) for t in tasks} for n, r in results.items()},
        root / "ablation_dice.png",
        title=f"Test Dice per seed ({phase} encoder), per task",
        ylabel="Dice",
    )
    return results


def _strata(results: dict[str, dict[str, list[float]]], prefix: str) -> list[str]:
    found = {k[len(prefix) :] for r in results.values() for k in r if k.startswith(prefix)}
    return sorted(found - {"overall"}, key=quality_rank)


def ablation_table(
    results: dict[str, dict[str, list[float]]], config: LocalDiscriminationConfig, seeds: Sequence[int]
) -> str:
    """Markdown: Dice per task (frozen, fine-tuned) and landmark MRE; then Dice per quality level and the gap."""
    d, p, t, n = config.data, config.pretrain, config.transfer, len(seeds)
    first = next(iter(results.values()), {})
    tasks = list(dict.fromkeys(k.split("/")[0] for k in first if k.count("/") == 2))
    phases = ["frozen", "finetuned"] if t.finetune_epochs else ["frozen"]
    landmarks = list(dict.fromkeys(k.split("/")[0] for k in first if k.count("/") == 1))
    columns = [(f"{task}/{phase}/overall", f"{task} Dice ({phase})") for task in tasks for phase in phases]
    columns += [(f"{name}/overall", f"{name.replace('_mre', '')} MRE px") for name in landmarks]
    lines = [
        "# Local-discrimination baselines",
        "",
        f"Dataset `{d.dataset}` ({d.num_images} images, {d.image_size} px), encoder `{config.model.encoder}`, "
        f"preset `{config.preset}`: pre-training {p.stage1_epochs} (+ {p.stage2_epochs} for LD) epochs of "
        f"{p.steps_per_epoch} steps on the training split without labels; transfer on {d.labelled} labelled "
        f"images, {t.frozen_epochs} epochs frozen then {t.finetune_epochs} fine-tuned; mean ± std over seeds "
        f"{list(seeds)}. Landmarks: one-shot, qualcl's design (lower is better).",
        "",
        "| variant | " + " | ".join(label for _, label in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, values in results.items():
        cells = [mean_std(values.get(key, []), n) for key, _ in columns]
        lines.append(f"| {DESCRIPTIONS.get(name, name)} | " + " | ".join(cells) + " |")
    phase = phases[-1]
    for task in tasks:
        strata = _strata(results, f"{task}/{phase}/")
        if len(strata) < 2:
            continue
        best, worst = strata[0], strata[-1]
        lines += [
            "",
            f"## {task}: Dice per quality level ({phase} encoder)",
            "",
            "| variant | " + " | ".join(strata) + f" | gap {best} − {worst} |",
            "|---|" + "---|" * (len(strata) + 1),
        ]
        for name, values in results.items():
            cells = [mean_std(values.get(f"{task}/{phase}/{s}", []), n) for s in strata]
            pairs = zip(
                values.get(f"{task}/{phase}/{best}", []), values.get(f"{task}/{phase}/{worst}", []), strict=True
            )
            gaps = [a - b for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
            lines.append(f"| {DESCRIPTIONS.get(name, name)} | " + " | ".join([*cells, mean_std(gaps, n)]) + " |")
    return "\n".join(lines) + "\n"
