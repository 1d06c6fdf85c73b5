"""The CoMCL recipe on the shared driver: data → multi-level contrastive pre-training → fine-tuning → evaluation."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from qualcl.data.levels import LEVEL_NAMES
from qualcl.data.loading import patient_split
from qualcl.data.table import ImageTable
from qualcl.metrics import confusion_matrix, stratified_grading_metrics
from qualcl.models import build_encoder
from qualcl.recipes import ablation
from qualcl.recipes.comcl.config import SPEC, ComclConfig, headline_metric
from qualcl.recipes.comcl.data import (
    BINARY_LEVELS,
    CXR_CLASSES,
    GradingDataset,
    PatchPairDataset,
    degrade_to_ratio,
    image_levels,
    level_names,
    load_eyeq_layout,
    load_nih_layout,
)
from qualcl.recipes.comcl.modules import GradingFineTuning, pretraining_module
from qualcl.recipes.comcl.probe import pretrained_encoder, probe_encoder
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader, train_loader
from qualcl.recipes.plots import plot_confusion, plot_embedding
from qualcl.recipes.run_folder import ModelCard, count, strata_table
from qualcl.samplers import LevelBalancedBatchSampler

__all__ = ["COMCL", "ComclData", "ComclRecipe", "pretraining_module", "run_ablation", "run_comcl"]

METRIC_NAMES = {"qwk": "QWK", "kappa": "Kappa"}
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
#: The frozen-encoder diagnostics of the ablation (``metrics["probe"]``): ``{cell key: heading}``.
PROBE_COLUMNS = {
    "probe_metric": "probe {label}",
    "probe_accuracy": "probe ACC",
    "probe_lq_kappa": "LQ-probe kappa",
    "probe_lq_accuracy": "LQ-probe ACC",
    "effective_rank": "effective rank",
    "within_level_cosine": "cosine within level",
    "between_level_cosine": "cosine between levels",
}
PAPER = (
    'Hou et al., "A Clinical-oriented Multi-level Contrastive Learning Method for Disease Diagnosis in '
    'Low-quality Medical Images", MICCAI 2024'
)
Ctx = RunContext[ComclConfig]


class ComclData(NamedTuple):
    """The run's image tables."""

    train: ImageTable
    test: ImageTable


class ComclRecipe(Recipe[ComclConfig, ComclData, GradingFineTuning]):
    """CoMCL end to end (Hou et al., MICCAI 2024: :data:`PAPER`).

    Stages: (1) data — the synthetic set (generated once into the dataset cache or ``data.data_dir``),
    EyeQ or NIH ChestX-ray14; (2) ``pretrain`` — multi-level contrastive pre-training of
    ``config.backbone`` on level-balanced lesion/healthy patch pairs (skipped by the baseline);
    (3) ``finetune`` — encoder + linear classifier for DR grading (or the 9 chest classes) with
    model selection by validation kappa (QWK for grades, unweighted for chest classes); (4)
    evaluation with that kappa and accuracy overall and per quality level, on the original test
    set and with the low-quality ratio raised to each of ``config.lq_ratios``
    (:mod:`qualcl.data.degrade` for fundus, simulated low dose for X-rays).
    """

    spec, paper = SPEC, PAPER

    def check(self, config: ComclConfig) -> None:
        """The pre-training's level names and the dataset's requirements (boxes, classes)."""
        level_names(config.pretrain.pairs)
        d, n = config.data, config.num_classes
        if d.dataset == "eyeq" and d.boxes == "ground_truth":
            raise ValueError("EyeQ has no lesion boxes: pass data.boxes=<detector weights from comcl-detector>")
        if d.dataset == "nih-cxr14" and d.boxes != "ground_truth":
            raise ValueError("nih-cxr14's boxes are BBox_List_2017.csv's (no X-ray detector): data.boxes=ground_truth")
        if d.dataset == "nih-cxr14" and n != len(CXR_CLASSES):
            raise ValueError(f"nih-cxr14 has {len(CXR_CLASSES)} classes {CXR_CLASSES}; got num_classes={n}")

    def load_data(self, ctx: Ctx) -> ComclData:
        """The ``(train, test)`` tables: synthetic lesion boxes, EyeQ's from its detector, NIH's own."""
        d, root = ctx.config.data, ctx.dataset_root(ctx.config.data)
        if d.dataset == "nih-cxr14":
            kwargs: dict[str, Any] = {"lq_ratio": d.lq_ratio, "seed": d.seed, "max_images": d.max_images}
            kwargs["progress"] = ctx.image_progress
            return ComclData(*(load_nih_layout(root, s, d.image_size, **kwargs) for s in ("train", "test")))
        truth = d.dataset == "synthetic"
        tables = [load_eyeq_layout(root, s, d.image_size, with_truth_boxes=truth) for s in ("train", "test")]
        if not truth:  # eyeq: its detector is checked by ComclRecipe.check
            from qualcl.recipes.comcl.detector import detect_boxes

            for table in tables:
                table.boxes = detect_boxes(Path(d.boxes), table.images, min_score=d.detector_min_score)
        return ComclData(*tables)

    def setup(self, ctx: Ctx, data: ComclData) -> GradingFineTuning:
        """The encoder (random init, or ``config.pretrained``) and its linear classifier."""
        c, f = ctx.config, ctx.config.finetune
        encoder = build_encoder(c.backbone, pretrained=c.pretrained)
        kappa = headline_metric(c)
        return GradingFineTuning(
            encoder, c.num_classes, lr=f.lr, weight_decay=f.weight_decay, epochs=f.epochs, kappa=kappa
        )

    def stages(self, config: ComclConfig) -> list[Stage]:
        """``pretrain`` (unless ``pretrain.method="none"``) and ``finetune``."""
        stages = [Stage("finetune", self.finetune)]
        return stages if config.pretrain.method == "none" else [Stage("pretrain", self.pretrain), *stages]

    def pretrain(self, ctx: Ctx, data: ComclData, grader: GradingFineTuning) -> None:
        """Contrastive pre-training on level-balanced patch pairs (CoMCL Eq. 1–3, or SimCLR)."""
        c, p = ctx.config, ctx.config.pretrain
        levels = level_names(p.pairs)
        binary = levels == BINARY_LEVELS
        dataset = PatchPairDataset(data.train, p.patch_size, c.seed, binary_levels=binary, augmentation=p.augmentation)
        sampler = LevelBalancedBatchSampler(
            dataset.levels, p.per_level, replacement=True, seed=c.seed, num_levels=len(levels)
        )
        module = pretraining_module(c, grader.encoder, augment=dataset.augment)
        # the collapse monitor's probe: 64 training images (the encoder is size-agnostic) and their mirror images
        shown = GradingDataset(data.train, train=False)
        probe_images = torch.stack([shown[i][0] for i in range(min(64, len(shown)))])

        def probe(_: L.LightningModule) -> tuple[Tensor, Tensor]:
            x = probe_images.to(module.device)
            return module.head(module.encoder(x)), module.head(module.encoder(x.flip(-1)))

        ctx.fit(
            "pretrain",
            module,
            DataLoader(dataset, batch_sampler=sampler, num_workers=0),
            weights={"pretrain_encoder": grader.encoder},
            max_steps=p.steps,
            every_n_train_steps=max(1, min(50, p.steps // 4)),
            sync_batchnorm=True,
            info={"steps": p.steps},
            collapse=probe,
        )

    def finetune(self, ctx: Ctx, data: ComclData, grader: GradingFineTuning) -> None:
        """Encoder + linear classifier, model selection by validation kappa on held-out patients."""
        config, cfg = ctx.config, ctx.config.finetune
        grader.classifier.reset_parameters()  # drawn from the stage's seed
        assert data.train.patient is not None
        keep, held = patient_split(data.train.patient, cfg.val_fraction, config.seed)
        dataset = GradingDataset(data.train.subset(keep), train=True, seed=config.seed)
        ctx.fit(
            "finetune",
            grader,
            train_loader(dataset, cfg.batch_size, seed=config.seed, drop_last=False, name="finetune.batch_size"),
            eval_loader(GradingDataset(data.train.subset(held), train=False), cfg.batch_size),
            weights={"classifier": grader},
            max_epochs=cfg.epochs,
            monitor="val/kappa",
            info={"epochs": cfg.epochs},
        )

    def evaluate(self, ctx: Ctx, data: ComclData, module: GradingFineTuning) -> dict[str, Any]:
        """Kappa and accuracy per quality level, at the original and at raised low-quality ratios."""
        config, test = ctx.config, data.test

        def forward(batch: Any) -> dict[str, Tensor]:
            features = module.encoder(batch[0])
            return {"preds": module.classifier(features).argmax(dim=1), "features": features}

        cxr = test.modality == "cxr"
        classes = list(CXR_CLASSES) if cxr else [str(g) for g in range(config.num_classes)]
        results: dict[str, Any] = {}
        tables = [test, *(degrade_to_ratio(test, r, seed=config.data.seed) for r in config.lq_ratios)]
        for name, table in zip(_settings(config), tables, strict=True):
            shown = GradingDataset(table, train=False)
            out = ctx.predict(forward, shown, batch_size=config.finetune.batch_size, modules=[module])
            results[name] = stratified_grading_metrics(
                out["preds"], table.label, config.num_classes, table.quality, table.quality_names
            )
            results[name]["overall"]["lq_ratio"] = table.lq_ratio
            if name == "original" and ctx.run.writable:
                plot_confusion(
                    confusion_matrix(out["preds"], table.label, config.num_classes),
                    classes,
                    ctx.run.path("plots", "confusion_matrix.png"),
                    title=f"{'Chest X-ray class' if cxr else 'DR grade'}, test (LQ {test.lq_ratio:.0%})",
                )
                plot_embedding(
                    out["features"],
                    image_levels(table),
                    LEVEL_NAMES,
                    ctx.run.path("plots", "embedding_map.png"),
                    title="Encoder features of test images by level",
                )
        metrics: dict[str, Any] = {"test": results, "data": {"train_images": len(data.train), "test_images": len(test)}}
        if config.probe:  # the pre-trained encoder before fine-tuning (the baseline's: its initialisation)
            metrics["probe"] = probe_encoder(pretrained_encoder(ctx.run, config), config.num_classes, data.train, test)
        return metrics

    def model_card(self, ctx: Ctx, data: ComclData, grader: GradingFineTuning, results: dict[str, Any]) -> ModelCard:
        """Headline kappa / accuracy, the strata × test-set table, the plots."""
        config = ctx.config
        metric = headline_metric(config)
        label = METRIC_NAMES[metric]
        original = results["test"]["original"]["overall"]
        p = config.pretrain
        pretraining = (
            "none (the baseline)"
            if p.method == "none"
            else f"{p.method}, pairs {list(p.pairs)}, miner {p.miner} ({p.spl_threshold}), {count(p.steps, 'step')} of "
            f"{p.per_level} patches per level ({p.patch_size} px)"
        )
        summary = (
            f"Preset `{config.preset}`, seed {config.seed}, encoder `{config.backbone}`, dataset "
            f"`{config.data.dataset}` ({len(data.train)} training / {len(data.test)} test images at "
            f"{config.data.image_size} px). Pre-training: {pretraining}. Fine-tuning: "
            f"{count(config.finetune.epochs, 'epoch')}, model selection by validation {label}. Test sets: the original "
            f"one and the low-quality ratio raised to {', '.join(f'{r:.0%}' for r in config.lq_ratios)}."
        )
        return ModelCard(
            title=f"CoMCL ({p.method}, {config.backbone}) on {config.data.dataset}",
            paper=PAPER,
            summary=summary,
            headline={f"test {label}": original[metric], "test accuracy": original["accuracy"]},
            table=strata_table(results["test"], {metric: label, "accuracy": "ACC"}),
            plots=[
                "pretrain.png",
                "pretrain_collapse.png",
                "finetune.png",
                "confusion_matrix.png",
                "embedding_map.png",
            ],
        )

    # ------------------------------------------------------------------ ablation
    def summary_metric(self, config: ComclConfig) -> tuple[str, str]:
        """The headline metric (QWK for grades) in every test set's cells, not the ``original/metric`` column."""
        metric = headline_metric(config)
        return metric, METRIC_NAMES[metric]

    def ablation_columns(self, config: ComclConfig) -> dict[str, str]:
        """Kappa (QWK for grades) and accuracy on each test set, then the frozen-encoder diagnostics."""
        label = METRIC_NAMES[headline_metric(config)]
        columns = {}
        for setting in _settings(config):
            columns[f"{setting}/metric"] = f"{label} {setting}"
            columns[f"{setting}/accuracy"] = f"ACC {setting}"
        return {**columns, **{key: heading.format(label=label) for key, heading in PROBE_COLUMNS.items()}}

    def ablation_cells(self, config: ComclConfig, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
        """``overall``: every column; each quality level of the original test set: its kappa and accuracy."""
        metric = headline_metric(config)
        test = metrics["test"]
        cells: dict[str, dict[str, float]] = {"overall": {}}
        for setting in _settings(config):
            for stratum, values in test[setting].items():
                if setting == "original" or stratum == "overall":
                    slot = cells.setdefault(stratum, {})
                    slot[f"{setting}/metric"] = values[metric]
                    slot[f"{setting}/accuracy"] = values["accuracy"]
        if "probe" in metrics:
            grade, quality = metrics["probe"]["grade"]["overall"], metrics["probe"]["low_quality"]
            cells["overall"] |= {"probe_metric": grade[metric], "probe_accuracy": grade["accuracy"]}
            cells["overall"] |= {"probe_lq_kappa": quality["qwk"], "probe_lq_accuracy": quality["accuracy"]}
            cells["overall"] |= metrics["probe"]["geometry"]
        return cells

    def ablation_notes(self, config: ComclConfig) -> str:
        """The protocol, and the paper's figures (for reference only)."""
        cxr = config.data.dataset == "nih-cxr14"
        paper = ", ".join(
            f"{SPEC.ablations[name].label} {kappa:.3f} / {acc:.3f}"
            for name, (kappa, acc) in (PAPER_TABLES_CXR if cxr else PAPER_TABLES).items()
        )
        where = "Chest X-ray at its original 43.2 % LQ (Table 1)" if cxr else "EyeQ at 33.4 % LQ (Tables 2-3)"
        return (
            f"Backbone `{config.backbone}`, {count(config.pretrain.steps, 'pre-training step')}, "
            f"{count(config.finetune.epochs, 'fine-tuning epoch')}. `original` is the test set as generated; `lq_70` / "
            "`lq_100` raise its low-quality ratio by degrading Good images. The probes are linear probes of the "
            "frozen pre-trained encoder's whole-image features (fitted on the training images, scored on the original "
            "test set; the baseline's encoder is its random initialisation) for the class and for low vs high "
            "quality; effective rank and cosines describe the test features by CoMCL level. The paper's Kappa / ACC, "
            f"{where}, for reference only (data, resolution and backbone differ): {paper}."
        )


#: The CoMCL recipe.
COMCL = ComclRecipe()
#: ``COMCL.run(config, out, *, callbacks=())``: the run end to end into the folder ``out``; re-running resumes.
run_comcl = COMCL.run

#: ``run_ablation(config, out, *, seeds, variants, progress, run_missing)``: the declared ablation
#: (:data:`~qualcl.recipes.comcl.config.ABLATIONS`, paper Tables 2-3) by the one runner
#: (:func:`qualcl.recipes.ablation.run_ablation`).
run_ablation = functools.partial(ablation.run_ablation, COMCL)


def _settings(config: ComclConfig) -> list[str]:
    """The test sets: ``original``, then ``lq_<percent>`` for each raised low-quality ratio."""
    return ["original", *(f"lq_{round(100 * r)}" for r in config.lq_ratios)]
