"""The CoMCL recipe on the shared driver: data → multi-level contrastive pre-training → fine-tuning → evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from qualcl.data.levels import LEVEL_NAMES, split_levels
from qualcl.data.table import ImageTable
from qualcl.heads.projection import ProjectionHead
from qualcl.losses import MultiLevelInfoNCE, NTXentLoss
from qualcl.metrics import confusion_matrix, stratified_grading_metrics
from qualcl.models import Encoder, build_encoder
from qualcl.recipes.comcl.config import PRESETS, ComclConfig, dataset_settings, headline_metric
from qualcl.recipes.comcl.data import (
    CXR_CLASSES,
    GradingDataset,
    PatchAugmentation,
    PatchPairDataset,
    degrade_to_ratio,
    load_eyeq_layout,
    load_nih_layout,
    patient_split,
)
from qualcl.recipes.comcl.modules import ContrastivePretraining, GradingFineTuning
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader
from qualcl.recipes.modules import gathering
from qualcl.recipes.plots import plot_confusion, plot_curves, plot_embedding
from qualcl.recipes.run_folder import ModelCard, RunFolder, strata_table
from qualcl.samplers import (
    CosineCountSchedule,
    LevelBalancedBatchSampler,
    SelfPacedHardNegativeMiner,
    ShardedShuffleSampler,
)

__all__ = ["COMCL", "ComclData", "ComclRecipe", "ComclState", "load_datasets", "pretraining_module", "run_comcl"]

METRIC_NAMES = {"qwk": "QWK", "kappa": "Kappa"}
BINARY_LEVELS = ("lesion", "healthy")
PAPER = (
    'Hou et al., "A Clinical-oriented Multi-level Contrastive Learning Method for Disease Diagnosis in '
    'Low-quality Medical Images", MICCAI 2024'
)


class ComclData(NamedTuple):
    """The run's image tables."""

    train: ImageTable
    test: ImageTable


@dataclass
class ComclState:
    """The run's models: the encoder, and the classifier once fine-tuning has built it."""

    encoder: Encoder
    finetune: GradingFineTuning | None = None


def load_datasets(config: ComclConfig, synthetic_root: Path | None, *, progress: bool = False) -> ComclData:
    """The run's ``(train, test)`` tables.

    The synthetic set is read from ``synthetic_root`` (generated there beforehand); EyeQ gets
    detector boxes; NIH ChestX-ray14 is read by :func:`~qualcl.recipes.comcl.data.load_nih_layout`.
    """
    cfg = config.data
    if cfg.dataset == "nih-cxr14":
        return _nih_data(config, progress)
    if cfg.dataset == "synthetic":
        if synthetic_root is None:
            raise ValueError("the synthetic dataset's folder is needed")
        root, truth = synthetic_root, True
    else:  # eyeq: checked by ComclRecipe.check
        root, truth = Path(str(cfg.data_dir)), False
    train = load_eyeq_layout(root, "train", cfg.image_size, with_truth_boxes=truth)
    test = load_eyeq_layout(root, "test", cfg.image_size, with_truth_boxes=truth)
    if not truth:
        from qualcl.recipes.comcl.detector import detect_boxes

        train.boxes = detect_boxes(Path(cfg.boxes), train.images, min_score=cfg.detector_min_score)
        test.boxes = detect_boxes(Path(cfg.boxes), test.images, min_score=cfg.detector_min_score)
    return ComclData(train, test)


def _nih_data(config: ComclConfig, progress: bool) -> ComclData:
    cfg = config.data
    wrap = None
    if progress:
        from tqdm.auto import tqdm

        def wrap(paths: Any) -> Any:
            return tqdm(paths, desc="loading X-rays", leave=False)

    root = Path(str(cfg.data_dir))
    kwargs: dict[str, Any] = {"lq_ratio": cfg.lq_ratio, "seed": cfg.seed, "max_images": cfg.max_images}
    return ComclData(
        load_nih_layout(root, "train", cfg.image_size, progress=wrap, **kwargs),
        load_nih_layout(root, "test", cfg.image_size, progress=wrap, **kwargs),
    )


def _plot_pretrain(run: RunFolder) -> None:
    rows = run.read_history("pretrain")
    if not rows or not run.writable:
        return
    steps = [r["step"] for r in rows]
    curves = {"total": (steps, [r["loss"] for r in rows])}
    for key in rows[0]:
        if key.startswith("loss/"):
            curves[key[5:]] = (steps, [r.get(key, math.nan) for r in rows])
    plot_curves(curves, run.path("plots", "pretrain_loss.png"), title="Contrastive pre-training loss", ylabel="loss")
    if "k_t" in rows[0]:
        plot_curves(
            {
                "K_t / delta": (steps, [r["k_t_fraction"] for r in rows]),
                "selected anchors": (steps, [r["selected_fraction"] for r in rows]),
            },
            run.path("plots", "self_paced_mining.png"),
            title="Self-paced hard-negative mining",
            ylabel="fraction",
        )


def _plot_finetune(run: RunFolder, metric: str) -> None:
    rows = run.read_history("finetune")
    if not rows or not run.writable:
        return
    epochs = [r["epoch"] for r in rows]
    plot_curves(
        {"train loss": (epochs, [r["loss"] for r in rows])},
        run.path("plots", "finetune_curves.png"),
        title="Diagnosis fine-tuning",
        xlabel="epoch",
        ylabel="cross-entropy",
        secondary={f"val {METRIC_NAMES[metric]}": (epochs, [r["val_kappa"] for r in rows])},
        secondary_label=METRIC_NAMES[metric],
    )


def pretraining_module(
    config: ComclConfig, encoder: Encoder, *, augment: PatchAugmentation | None = None
) -> ContrastivePretraining:
    """The pre-training stage's module: ``encoder`` + a new projection head + the configured loss.

    CoMCL's multi-level loss (with the self-paced miner if configured) or SimCLR's NT-Xent; under
    DDP (:func:`~qualcl.recipes.modules.gathering`) the negatives and the miner's threshold come
    from every rank, so a step equals one process on the global batch.
    """
    cfg = config.pretrain
    binary = all(name in BINARY_LEVELS for pair in cfg.pairs for name in pair)
    gather = gathering(config.trainer)
    loss: MultiLevelInfoNCE | NTXentLoss = NTXentLoss(cfg.temperature, gather_distributed=gather)
    if cfg.method == "comcl":
        miner = None
        if cfg.miner == "self_paced":
            miner = SelfPacedHardNegativeMiner(
                CosineCountSchedule(None, cfg.steps), threshold=cfg.spl_threshold, gather_distributed=gather
            )
        loss = MultiLevelInfoNCE(
            pairs=cfg.pairs,
            level_names=BINARY_LEVELS if binary else LEVEL_NAMES,
            temperature=cfg.temperature,
            negatives_from=cfg.negatives_from,
            miner=miner,
            gather_distributed=gather,
        )
    width = encoder.num_features
    return ContrastivePretraining(
        encoder,
        ProjectionHead((width, width, cfg.projection_dim)),
        loss,
        temperature=cfg.temperature,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        max_steps=cfg.steps,
        augment=augment,
    )


class ComclRecipe(Recipe[ComclConfig, ComclData, ComclState]):
    """CoMCL end to end.

    Stages: (1) data — the synthetic set is generated once into ``<run>/data`` (or EyeQ / NIH
    ChestX-ray14 is read); (2) ``pretrain`` — multi-level contrastive pre-training of
    ``config.backbone`` on level-balanced lesion/healthy patch pairs (skipped by the baseline);
    (3) ``finetune`` — encoder + linear classifier for DR grading (or the 9 chest classes) with
    model selection by validation kappa (QWK for grades, unweighted for chest classes); (4)
    evaluation with that kappa and accuracy overall and per quality level, on the original test
    set and with the low-quality ratio raised to each of ``config.lq_ratios``
    (:mod:`qualcl.data.degrade` for fundus, simulated low dose for X-rays).

    Reference:
        Hou et al., "A Clinical-oriented Multi-level Contrastive Learning Method for Disease
        Diagnosis in Low-quality Medical Images", MICCAI 2024.
    """

    name = "comcl"
    paper = PAPER
    config_class = ComclConfig
    presets = PRESETS
    datasets = ("synthetic", "eyeq", "nih-cxr14")
    data_help = "dataset folder (real data, or an existing synthetic set)"
    set_example = "pretrain.steps=100"

    def dataset_settings(self, dataset: str, preset: str) -> dict[str, Any]:
        """NIH ChestX-ray14: 9 classes, 43.2 % LQ, its own boxes."""
        return dataset_settings(dataset, preset)

    def check(self, config: ComclConfig) -> None:
        """The dataset's requirements (a folder, boxes, classes)."""
        cfg = config.data
        if cfg.dataset != "synthetic" and cfg.data_dir is None:
            raise ValueError(f"--data DIR is required with --dataset {cfg.dataset}")
        if cfg.dataset == "eyeq" and cfg.boxes == "ground_truth":
            raise ValueError("EyeQ has no lesion boxes: pass data.boxes=<detector weights from comcl-detector>")
        if cfg.dataset == "nih-cxr14":
            if cfg.boxes != "ground_truth":
                raise ValueError(
                    "nih-cxr14 takes its lesion boxes from BBox_List_2017.csv (data.boxes='ground_truth'); "
                    "qualcl has no chest X-ray lesion detector"
                )
            if config.num_classes != len(CXR_CLASSES):
                raise ValueError(
                    f"nih-cxr14 has {len(CXR_CLASSES)} classes {CXR_CLASSES}; got num_classes={config.num_classes}"
                )

    def load_data(self, ctx: RunContext[ComclConfig]) -> ComclData:
        """Generate (once) or read the images."""
        cfg = ctx.config.data
        root = None
        if cfg.dataset == "synthetic":
            root = ctx.synthetic_fundus(
                cfg.data_dir, num_images=cfg.num_images, size=cfg.image_size, seed=cfg.seed, lq_ratio=cfg.lq_ratio
            )
        return load_datasets(ctx.config, root, progress=ctx.progress)

    def setup(self, ctx: RunContext[ComclConfig], data: ComclData) -> ComclState:
        """The encoder (random init, or ``config.pretrained``)."""
        return ComclState(build_encoder(ctx.config.backbone, pretrained=ctx.config.pretrained))

    def stages(self, config: ComclConfig) -> list[Stage]:
        """``pretrain`` (unless ``pretrain.method="none"``) and ``finetune``."""
        stages = [Stage("finetune", self.finetune)]
        return stages if config.pretrain.method == "none" else [Stage("pretrain", self.pretrain), *stages]

    def pretrain(self, ctx: RunContext[ComclConfig], data: ComclData, state: ComclState) -> None:
        """Contrastive pre-training on level-balanced patch pairs (CoMCL Eq. 1–3, or SimCLR)."""
        config, cfg = ctx.config, ctx.config.pretrain
        binary = all(name in BINARY_LEVELS for pair in cfg.pairs for name in pair)
        dataset = PatchPairDataset(
            data.train, cfg.patch_size, config.seed, binary_levels=binary, augmentation=cfg.augmentation
        )
        sampler = LevelBalancedBatchSampler(
            dataset.levels, cfg.per_level, replacement=True, seed=config.seed, num_levels=2 if binary else 4
        )
        module = pretraining_module(config, state.encoder, augment=dataset.augment)
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
            weights={"pretrain_encoder": state.encoder},
            max_steps=cfg.steps,
            history="step_log",
            history_key="step",
            every_n_train_steps=max(1, min(50, cfg.steps // 4)),
            sync_batchnorm=True,
            info={"steps": cfg.steps},
            collapse=probe,
        )
        _plot_pretrain(ctx.run)

    def finetune(self, ctx: RunContext[ComclConfig], data: ComclData, state: ComclState) -> None:
        """Encoder + linear classifier, model selection by validation kappa on held-out patients."""
        config, cfg = ctx.config, ctx.config.finetune
        metric = headline_metric(config)
        state.finetune = GradingFineTuning(
            state.encoder, config.num_classes, lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs, kappa=metric
        )
        assert data.train.patient is not None
        keep, held = patient_split(data.train.patient, cfg.val_fraction, config.seed)
        fit_data, val_data = data.train.subset(keep), data.train.subset(held)
        dataset = GradingDataset(fit_data, train=True, seed=config.seed)
        sampler = ShardedShuffleSampler(len(dataset), seed=config.seed)  # each rank its shard of the epoch
        ctx.fit(
            "finetune",
            state.finetune,
            DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler),
            eval_loader(GradingDataset(val_data, train=False), cfg.batch_size),
            weights={"classifier": state.finetune},
            max_epochs=cfg.epochs,
            monitor="val/kappa",
            info={"epochs": cfg.epochs},
        )
        _plot_finetune(ctx.run, metric)

    def _predict(self, ctx: RunContext[ComclConfig], module: GradingFineTuning, data: ImageTable) -> dict[str, Tensor]:
        def forward(batch: Any) -> dict[str, Tensor]:
            features = module.encoder(batch[0])
            return {"preds": module.classifier(features).argmax(dim=1), "features": features}

        dataset = GradingDataset(data, train=False)
        return ctx.predict(forward, dataset, batch_size=ctx.config.finetune.batch_size, modules=[module])

    def evaluate(self, ctx: RunContext[ComclConfig], data: ComclData, state: ComclState) -> dict[str, Any]:
        """Kappa and accuracy per quality level, at the original and at raised low-quality ratios."""
        config, test = ctx.config, data.test
        assert state.finetune is not None
        cxr = test.modality == "cxr"
        classes = list(CXR_CLASSES) if cxr else [str(g) for g in range(config.num_classes)]
        results: dict[str, Any] = {}
        settings = [("original", test)] + [
            (f"lq_{round(100 * r)}", degrade_to_ratio(test, r, seed=config.data.seed)) for r in config.lq_ratios
        ]
        for name, table in settings:
            out = self._predict(ctx, state.finetune, table)
            metrics = stratified_grading_metrics(
                out["preds"], table.label, config.num_classes, table.quality, table.quality_names
            )
            metrics["overall"]["lq_ratio"] = table.lq_ratio
            results[name] = metrics
            if name == "original" and ctx.run.writable:
                plot_confusion(
                    confusion_matrix(out["preds"], table.label, config.num_classes),
                    classes,
                    ctx.run.path("plots", "confusion_matrix.png"),
                    title=f"{'Chest X-ray class' if cxr else 'DR grade'}, test (LQ {test.lq_ratio:.0%})",
                )
                plot_embedding(
                    out["features"],
                    split_levels(table.label, table.quality),
                    LEVEL_NAMES,
                    ctx.run.path("plots", "embedding_map.png"),
                    title="Encoder features of test images by level",
                )
        return {"test": results, "data": {"train_images": len(data.train), "test_images": len(test)}}

    def model_card(
        self, ctx: RunContext[ComclConfig], data: ComclData, state: ComclState, results: dict[str, Any]
    ) -> ModelCard:
        """Headline kappa / accuracy, the strata × test-set table, the plots."""
        config = ctx.config
        metric = headline_metric(config)
        label = METRIC_NAMES[metric]
        original = results["test"]["original"]["overall"]
        p = config.pretrain
        pretraining = (
            "none (the baseline)"
            if p.method == "none"
            else f"{p.method}, pairs {list(p.pairs)}, miner {p.miner} ({p.spl_threshold}), {p.steps} steps of "
            f"{p.per_level} patches per level ({p.patch_size} px)"
        )
        summary = (
            f"Preset `{config.preset}`, seed {config.seed}, encoder `{config.backbone}`, dataset "
            f"`{config.data.dataset}` ({len(data.train)} training / {len(data.test)} test images at "
            f"{config.data.image_size} px). Pre-training: {pretraining}. Fine-tuning: {config.finetune.epochs} "
            f"epochs, model selection by validation {label}. Test sets: the original one and the low-quality "
            f"ratio raised to {', '.join(f'{r:.0%}' for r in config.lq_ratios)}."
        )
        return ModelCard(
            title=f"CoMCL ({p.method}, {config.backbone}) on {config.data.dataset}",
            paper=PAPER,
            summary=summary,
            headline={f"test {label}": original[metric], "test accuracy": original["accuracy"]},
            table=strata_table(results["test"], {metric: label, "accuracy": "ACC"}),
            plots=[
                "pretrain_loss.png",
                "self_paced_mining.png",
                "finetune_curves.png",
                "confusion_matrix.png",
                "embedding_map.png",
            ],
        )


#: The CoMCL recipe.
COMCL = ComclRecipe()


#: ``COMCL.run(config, out, *, callbacks=())``: the run end to end into the folder ``out``; re-running resumes.
run_comcl = COMCL.run
