"""``run_comcl``: data → multi-level contrastive pre-training → diagnosis fine-tuning → evaluation."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.utils.data import DataLoader

from qualcl.data.levels import LEVEL_NAMES, split_levels
from qualcl.heads.projection import ProjectionHead
from qualcl.losses import MultiLevelInfoNCE
from qualcl.metrics import confusion_matrix, stratified_grading_metrics
from qualcl.recipes.backbones import Backbone, build_backbone
from qualcl.recipes.callbacks import EpochSetter, HistoryWriter, load_best, make_trainer, resume_path
from qualcl.recipes.comcl.config import ComclConfig, headline_metric
from qualcl.recipes.comcl.data import (
    CXR_CLASSES,
    FundusImages,
    GradingDataset,
    PatchPairDataset,
    degrade_to_ratio,
    load_eyeq_layout,
    load_nih_layout,
    patient_split,
)
from qualcl.recipes.comcl.modules import ContrastivePretraining, GradingFineTuning
from qualcl.recipes.plots import plot_confusion, plot_curves, plot_embedding
from qualcl.recipes.run_folder import RunFolder
from qualcl.samplers import CosineCountSchedule, LevelBalancedBatchSampler, SelfPacedHardNegativeMiner

__all__ = ["load_datasets", "run_comcl"]

METRIC_NAMES = {"qwk": "QWK", "kappa": "Kappa"}
BINARY_LEVELS = ("lesion", "healthy")


def load_datasets(config: ComclConfig, synthetic_dir: Path) -> tuple[FundusImages, FundusImages]:
    """The run's ``(train, test)`` images.

    The synthetic set is generated into ``synthetic_dir`` unless ``data.data_dir`` names one; EyeQ gets
    detector boxes; NIH ChestX-ray14 is read by :func:`~qualcl.recipes.comcl.data.load_nih_layout`.
    """
    cfg = config.data
    if cfg.dataset == "synthetic":
        from qualcl.data.synthetic import ensure_fundus_dataset

        root = ensure_fundus_dataset(
            Path(cfg.data_dir) if cfg.data_dir else synthetic_dir,
            num_images=cfg.num_images,
            size=cfg.image_size,
            seed=cfg.seed,
            lq_ratio=cfg.lq_ratio,
            progress=config.progress,
        )
        truth = True
    elif cfg.dataset == "eyeq":
        if cfg.data_dir is None:
            raise ValueError("--data DIR is required with --dataset eyeq")
        root = Path(cfg.data_dir)
        truth = False
        if cfg.boxes == "ground_truth":
            raise ValueError("EyeQ has no lesion boxes: pass data.boxes=<detector weights from comcl-detector>")
    elif cfg.dataset == "nih-cxr14":
        return _nih_data(config)
    else:
        raise ValueError(f"dataset {cfg.dataset!r} is not supported by comcl; use 'synthetic', 'eyeq' or 'nih-cxr14'")
    train = load_eyeq_layout(root, "train", cfg.image_size, with_truth_boxes=truth)
    test = load_eyeq_layout(root, "test", cfg.image_size, with_truth_boxes=truth)
    if not truth:
        from qualcl.recipes.comcl.detector import detect_boxes

        train.boxes = detect_boxes(Path(cfg.boxes), train.images, min_score=cfg.detector_min_score)
        test.boxes = detect_boxes(Path(cfg.boxes), test.images, min_score=cfg.detector_min_score)
    return train, test


def _nih_data(config: ComclConfig) -> tuple[FundusImages, FundusImages]:
    cfg = config.data
    if cfg.data_dir is None:
        raise ValueError("--data DIR is required with --dataset nih-cxr14")
    if cfg.boxes != "ground_truth":
        raise ValueError(
            "nih-cxr14 takes its lesion boxes from BBox_List_2017.csv (data.boxes='ground_truth'); "
            "qualcl has no chest X-ray lesion detector"
        )
    if config.num_classes != len(CXR_CLASSES):
        raise ValueError(
            f"nih-cxr14 has {len(CXR_CLASSES)} classes {CXR_CLASSES}; got num_classes={config.num_classes}"
        )
    progress = None
    if config.progress:
        from tqdm.auto import tqdm

        def progress(paths: Any) -> Any:
            return tqdm(paths, desc="loading X-rays", leave=False)

    root = Path(cfg.data_dir)
    kwargs: dict[str, Any] = {
        "lq_ratio": cfg.lq_ratio,
        "seed": cfg.seed,
        "max_images": cfg.max_images,
        "progress": progress,
    }
    return (
        load_nih_layout(root, "train", cfg.image_size, **kwargs),
        load_nih_layout(root, "test", cfg.image_size, **kwargs),
    )


def _pretrain(config: ComclConfig, run: RunFolder, train: FundusImages, callbacks: list[Callback]) -> Backbone:
    cfg = config.pretrain
    encoder = build_backbone(config.backbone)
    if cfg.method == "none":
        return encoder
    if run.stage_done("pretrain"):
        run.load_weights(encoder, "pretrain_encoder")
        return encoder
    binary = all(name in BINARY_LEVELS for pair in cfg.pairs for name in pair)
    dataset = PatchPairDataset(train, cfg.patch_size, config.seed, binary_levels=binary, augmentation=cfg.augmentation)
    sampler = LevelBalancedBatchSampler(
        dataset.levels,
        cfg.per_level,
        replacement=True,
        seed=config.seed,
        num_levels=2 if binary else 4,
    )
    loss = None
    if cfg.method == "comcl":
        miner = None
        if cfg.miner == "self_paced":
            miner = SelfPacedHardNegativeMiner(CosineCountSchedule(None, cfg.steps), threshold=cfg.spl_threshold)
        elif cfg.miner != "none":
            raise ValueError(f"pretrain.miner must be 'self_paced' or 'none', got {cfg.miner!r}")
        loss = MultiLevelInfoNCE(
            pairs=cfg.pairs,
            level_names=BINARY_LEVELS if binary else LEVEL_NAMES,
            temperature=cfg.temperature,
            negatives_from=cfg.negatives_from,
            miner=miner,
        )
    elif cfg.method != "simclr":
        raise ValueError(f"pretrain.method must be 'comcl', 'simclr' or 'none', got {cfg.method!r}")
    head = ProjectionHead((encoder.out_dim, encoder.out_dim, cfg.projection_dim))
    module = ContrastivePretraining(
        encoder,
        head,
        loss,
        temperature=cfg.temperature,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        max_steps=cfg.steps,
    )
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0)
    trainer = make_trainer(
        run,
        "pretrain",
        max_steps=cfg.steps,
        progress=config.progress,
        callbacks=[HistoryWriter(run, "pretrain", "step_log"), EpochSetter(dataset, sampler), *callbacks],
        every_n_train_steps=max(1, min(50, cfg.steps // 4)),
    )
    start = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=resume_path(run, "pretrain", "step"), weights_only=True)
    run.save_weights(encoder, "pretrain_encoder")
    run.mark_done("pretrain", steps=cfg.steps, seconds=round(time.perf_counter() - start, 1))
    _plot_pretrain(run)
    return encoder


def _plot_pretrain(run: RunFolder) -> None:
    rows = run.read_history("pretrain")
    if not rows:
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


def _loader(data: FundusImages, *, train: bool, batch_size: int, seed: int) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(GradingDataset(data, train=train), batch_size=batch_size, shuffle=train, generator=generator)


def _finetune(
    config: ComclConfig, run: RunFolder, encoder: Backbone, train: FundusImages, callbacks: list[Callback]
) -> GradingFineTuning:
    cfg = config.finetune
    metric = headline_metric(config)
    module = GradingFineTuning(
        encoder, config.num_classes, lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs, kappa=metric
    )
    if run.stage_done("finetune"):
        run.load_weights(module, "classifier")
        return module
    keep, held = patient_split(train.patient, cfg.val_fraction, config.seed)
    fit_data, val_data = train.subset(keep), train.subset(held)
    trainer = make_trainer(
        run,
        "finetune",
        max_epochs=cfg.epochs,
        progress=config.progress,
        callbacks=[HistoryWriter(run, "finetune", "epoch_log"), *callbacks],
        monitor="val/kappa",
    )
    start = time.perf_counter()
    trainer.fit(
        module,
        _loader(fit_data, train=True, batch_size=cfg.batch_size, seed=config.seed),
        _loader(val_data, train=False, batch_size=cfg.batch_size, seed=config.seed),
        ckpt_path=resume_path(run, "finetune", "epoch"),
        weights_only=True,
    )
    load_best(run, "finetune", module)
    run.save_weights(module, "classifier")
    run.mark_done("finetune", epochs=cfg.epochs, seconds=round(time.perf_counter() - start, 1))
    rows = run.read_history("finetune")
    if rows:
        epochs = [r["epoch"] for r in rows]
        plot_curves(
            {"train loss": (epochs, [r["train_loss"] for r in rows])},
            run.path("plots", "finetune_curves.png"),
            title="Diagnosis fine-tuning",
            xlabel="epoch",
            ylabel="cross-entropy",
            secondary={f"val {METRIC_NAMES[metric]}": (epochs, [r["val_kappa"] for r in rows])},
            secondary_label=METRIC_NAMES[metric],
        )
    return module


@torch.no_grad()
def _predict(module: GradingFineTuning, data: FundusImages, batch_size: int) -> tuple[Tensor, Tensor]:
    module.eval()
    preds, features = [], []
    for images, _, _ in _loader(data, train=False, batch_size=batch_size, seed=0):
        feats = module.encoder(images)
        features.append(feats)
        preds.append(module.classifier(feats).argmax(dim=1))
    return torch.cat(preds), torch.cat(features)


def _evaluate(config: ComclConfig, run: RunFolder, module: GradingFineTuning, test: FundusImages) -> dict[str, Any]:
    results: dict[str, Any] = {}
    cxr = test.modality == "cxr"
    classes = list(CXR_CLASSES) if cxr else [str(g) for g in range(config.num_classes)]
    original_ratio = int((test.quality > 0).sum()) / max(len(test), 1)
    settings = [("original", test)] + [
        (f"lq_{round(100 * r)}", degrade_to_ratio(test, r, seed=config.data.seed)) for r in config.lq_ratios
    ]
    for name, data in settings:
        preds, features = _predict(module, data, config.finetune.batch_size)
        metrics = stratified_grading_metrics(preds, data.grade, config.num_classes, data.quality, data.quality_names)
        metrics["overall"]["lq_ratio"] = int((data.quality > 0).sum()) / max(len(data), 1)
        results[name] = metrics
        if name == "original":
            plot_confusion(
                confusion_matrix(preds, data.grade, config.num_classes),
                classes,
                run.path("plots", "confusion_matrix.png"),
                title=f"{'Chest X-ray class' if cxr else 'DR grade'}, test (LQ {original_ratio:.0%})",
            )
            plot_embedding(
                features,
                split_levels(data.grade, data.quality),
                LEVEL_NAMES,
                run.path("plots", "embedding_map.png"),
                title="Encoder features of test images by level",
            )
    return results


def run_comcl(config: ComclConfig, out: str | Path, *, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Run CoMCL end to end and write the run folder ``out``; re-running resumes where it stopped.

    Stages: (1) data — the synthetic set is generated once into ``out/data`` (or EyeQ / NIH
    ChestX-ray14 is read); (2) multi-level contrastive pre-training of ``config.backbone`` on
    level-balanced lesion/healthy patch pairs; (3) fine-tuning for DR grading (or the 9 chest
    classes) with model selection by validation kappa (QWK for grades, unweighted for chest
    classes); (4) evaluation with that kappa and accuracy overall and per quality level, on the
    original test set and with the low-quality ratio raised to each of ``config.lq_ratios``
    (:mod:`qualcl.data.degrade` for fundus, simulated low dose for X-rays). Finished stages are
    skipped on a re-run and an interrupted stage continues from its ``last.ckpt``.

    Args:
        config: The run's configuration (see :mod:`qualcl.recipes.comcl.config`).
        out: Run folder.
        callbacks: Extra Lightning callbacks for both training stages.

    Returns:
        The metrics written to ``metrics.json``.

    Example:
        >>> from qualcl.recipes.comcl import comcl_config, run_comcl
        >>> metrics = run_comcl(comcl_config("smoke"), "runs/comcl-smoke")  # doctest: +SKIP

    Reference:
        Hou et al., "A Clinical-oriented Multi-level Contrastive Learning Method for Disease
        Diagnosis in Low-quality Medical Images", MICCAI 2024 (seed 000).
    """
    run = RunFolder(out)
    run.save_config(config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    start = time.perf_counter()
    train, test = load_datasets(config, run.path("data"))
    encoder = _pretrain(config, run, train, callbacks or [])
    module = _finetune(config, run, encoder, train, callbacks or [])
    results: dict[str, Any] = {
        "test": _evaluate(config, run, module, test),
        "data": {"train_images": len(train), "test_images": len(test)},
        "seconds": round(time.perf_counter() - start, 1),
    }
    run.write_metrics(results)
    original = results["test"]["original"]["overall"]
    metric = headline_metric(config)
    run.write_model_card(
        title=f"CoMCL ({config.pretrain.method}, {config.backbone}) on {config.data.dataset}",
        paper="Hou et al., MICCAI 2024 — Clinical-oriented Multi-level Contrastive Learning (seed 000)",
        body=(
            f"Preset `{config.preset}`, seed {config.seed}. Pre-training: {config.pretrain.method}, "
            f"pairs {list(config.pretrain.pairs)}, miner {config.pretrain.miner} "
            f"({config.pretrain.spl_threshold}), "
            f"{config.pretrain.steps} steps. Fine-tuning: {config.finetune.epochs} epochs. "
            f"Test {METRIC_NAMES[metric]} {original[metric]:.3f}, accuracy {original['accuracy']:.3f}."
        ),
        metrics=results["test"],
    )
    return results
