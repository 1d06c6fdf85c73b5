"""``run_mkcnet``: data → two-stage Task Net / Meta Learner training → evaluation per quality level."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.utils.data import DataLoader

from qualcl.data.readers import quality_scheme
from qualcl.metrics import confusion_matrix, diagnosis_metrics, stratified_diagnosis_metrics
from qualcl.recipes.callbacks import EpochSetter, HistoryWriter, load_best, make_trainer, resume_path
from qualcl.recipes.mkcnet.config import MkcnetConfig
from qualcl.recipes.mkcnet.data import (
    MkcnetDataset,
    QualityImages,
    ResumableLoader,
    TwoPassBatchSampler,
    load_splits,
    normalisation,
)
from qualcl.recipes.mkcnet.model import build_meta_learner, build_task_net
from qualcl.recipes.mkcnet.modules import MkcnetTraining
from qualcl.recipes.plots import plot_confusion, plot_curves, plot_embedding
from qualcl.recipes.run_folder import RunFolder

__all__ = ["run_mkcnet"]

STAGE = "train"


def _data_root(config: MkcnetConfig, run: RunFolder) -> Path:
    cfg = config.data
    if cfg.dataset == "synthetic":
        from qualcl.data.synthetic import ensure_fundus_dataset

        return ensure_fundus_dataset(
            Path(cfg.data_dir) if cfg.data_dir else run.path("data"),
            num_images=cfg.num_images,
            size=cfg.image_size,
            seed=cfg.seed,
            lq_ratio=cfg.lq_ratio,
            progress=config.progress,
        )
    if cfg.data_dir is None:
        raise ValueError(f"--data DIR is required with --dataset {cfg.dataset}")
    return Path(cfg.data_dir)


def _eval_loader(dataset: MkcnetDataset, batch_size: int) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def _plot_history(run: RunFolder) -> None:
    rows = run.read_history(STAGE)
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    losses = {
        name: (epochs, [r[key] for r in rows])
        for key, name in (
            ("loss_diagnosis", "L_D"),
            ("loss_quality", "L_Q"),
            ("loss_auxiliary", "L_Ω / L"),
            ("meta_outer_loss", "meta outer loss"),
        )
        if key in rows[0]
    }
    plot_curves(
        losses,
        run.path("plots", "training_curves.png"),
        title="MKCNet training",
        xlabel="epoch",
        ylabel="focal loss",
        secondary={"val AUC": (epochs, [r["val_auc"] for r in rows])},
        secondary_label="AUC",
    )
    if "aux_entropy" in rows[0]:
        plot_curves(
            {"H(mean y_ω)": (epochs, [r["aux_entropy"] for r in rows])},
            run.path("plots", "meta_entropy.png"),
            title="Entropy of the batch-averaged auxiliary targets",
            xlabel="epoch",
            ylabel="nats",
            secondary={"‖meta gradient‖": (epochs, [r["meta_grad_norm"] for r in rows])},
            secondary_label="norm",
        )


def _train(
    config: MkcnetConfig,
    run: RunFolder,
    module: MkcnetTraining,
    train: MkcnetDataset,
    val: MkcnetDataset,
    callbacks: list[Callback],
) -> None:
    if run.stage_done(STAGE):
        run.load_weights(module, "mkcnet")
        return
    cfg = config.train
    sampler = TwoPassBatchSampler(len(train), cfg.batch_size, 2 if module.meta is not None else 1, config.seed)
    trainer = make_trainer(
        run,
        STAGE,
        max_epochs=cfg.epochs,
        progress=config.progress,
        callbacks=[HistoryWriter(run, STAGE, "epoch_log"), EpochSetter(sampler), *callbacks],
        monitor="val/auc",
        check_val_every_n_epoch=max(1, cfg.val_every),
    )
    start = time.perf_counter()

    def progress() -> tuple[int, int]:
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.completed

    trainer.fit(
        module,
        ResumableLoader(train, sampler, progress),
        _eval_loader(val, cfg.batch_size),
        ckpt_path=resume_path(run, STAGE, "epoch"),
        weights_only=True,
    )
    best_epoch = load_best(run, STAGE, module)
    run.save_weights(module, "mkcnet")
    run.mark_done(STAGE, epochs=cfg.epochs, best_epoch=best_epoch, seconds=round(time.perf_counter() - start, 1))
    _plot_history(run)


@torch.no_grad()
def _predict(module: MkcnetTraining, dataset: MkcnetDataset, batch_size: int) -> dict[str, Tensor]:
    module.eval()
    probs, features, meta_logits = [], [], []
    for images, _, _, _, _ in _eval_loader(dataset, batch_size):
        logits, feature = module.task.forward_with_feature(images)
        probs.append(torch.softmax(logits.diagnosis.float(), dim=1))
        features.append(feature)
        if module.meta is not None:
            meta_logits.append(module.meta.logits(images))
    out = {"probs": torch.cat(probs), "features": torch.cat(features)}
    if meta_logits:
        out["meta_logits"] = torch.cat(meta_logits)
    return out


def _evaluate(
    config: MkcnetConfig, run: RunFolder, module: MkcnetTraining, test: QualityImages, dataset: MkcnetDataset
) -> dict[str, Any]:
    scheme = quality_scheme(test.scheme)
    out = _predict(module, dataset, config.train.batch_size)
    metrics = stratified_diagnosis_metrics(
        out["probs"], test.diagnosis, test.quality, scheme.quality_names, legacy_auc=config.legacy_auc
    )
    low = test.quality > 0
    metrics["low_quality"] = diagnosis_metrics(out["probs"][low], test.diagnosis[low], legacy_auc=config.legacy_auc)
    n_d, n_q = test.num_diagnosis, test.num_quality
    names = [str(d) for d in range(n_d)]
    plot_confusion(
        confusion_matrix(out["probs"].argmax(1), test.diagnosis, n_d),
        names,
        run.path("plots", "confusion_matrix.png"),
        title=f"Diagnosis, test ({config.data.dataset})",
    )
    joint = test.quality_code * n_d + test.diagnosis
    joint_names = [f"d{j % n_d} q{j // n_d}" for j in range(n_d * n_q)]
    plot_embedding(
        out["features"],
        joint,
        joint_names,
        run.path("plots", "diagnosis_feature_map.png"),
        title="Task Net f^{d*} of test images by joint label",
    )
    if "meta_logits" in out:
        plot_embedding(
            out["meta_logits"],
            joint,
            joint_names,
            run.path("plots", "meta_learner_map.png"),
            title="Meta Learner outputs M_φ(x) of test images by joint label",
        )
    return metrics


def run_mkcnet(config: MkcnetConfig, out: str | Path, *, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Run MKCNet end to end and write the run folder ``out``; re-running resumes where it stopped.

    Stages: (1) data — the dataset's records split (official splits where they exist; the
    synthetic set is generated once into ``out/data``), images loaded at ``data.image_size``;
    (2) training — per epoch a Task Net pass and a Meta Learner pass (second-order meta step),
    validation AUC selecting the best epoch; (3) test evaluation — AUC (one-vs-one on
    probabilities, or the official hard-label AUC on binary sets with ``legacy_auc``), accuracy
    and macro F1, overall and per quality level. The run folder gets ``config.yaml``,
    ``metrics.json``/``.csv``, ``history/train.csv``, plots (curves, confusion matrix, embedding
    maps of ``f^{d*}`` and of the Meta Learner's outputs by joint label), ``weights/mkcnet.safetensors``
    and ``MODEL_CARD.md``. An interrupted training continues from ``checkpoints/train/last.ckpt``.

    Args:
        config: The run's configuration (see :mod:`qualcl.recipes.mkcnet.config`).
        out: Run folder.
        callbacks: Extra Lightning callbacks.

    Returns:
        The metrics written to ``metrics.json``.

    Example:
        >>> from qualcl.recipes.mkcnet import mkcnet_config, run_mkcnet
        >>> metrics = run_mkcnet(mkcnet_config("smoke"), "runs/mkcnet-smoke")  # doctest: +SKIP

    Reference:
        Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding", CVPR 2023 (seed 001).
    """
    run = RunFolder(out)
    run.save_config(config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    start = time.perf_counter()
    train, val, test = load_splits(config.data, _data_root(config, run), progress=config.progress)
    mean, std = normalisation(config.data, train)
    n_d, n_q = train.num_diagnosis, train.num_quality
    task = build_task_net(config.model, config.data.channels, n_d, n_q)
    meta = build_meta_learner(config.model, config.data.channels, n_d, n_q)
    module = MkcnetTraining(
        task,
        meta,
        config.train,
        slice_length=config.model.slice_length,
        mask_by=config.model.mask_by,
        legacy_auc=config.legacy_auc,
    )
    datasets = [MkcnetDataset(part, mean, std) for part in (train, val, test)]
    _train(config, run, module, datasets[0], datasets[1], callbacks or [])
    metrics = _evaluate(config, run, module, test, datasets[2])
    results: dict[str, Any] = {
        "test": metrics,
        "data": {
            "train_images": len(train),
            "val_images": len(val),
            "test_images": len(test),
            "train_lq_fraction": float((train.quality > 0).double().mean()),
            "normalisation": {"mean": list(mean), "std": list(std)},
        },
        "best_epoch": run.stage_info(STAGE).get("best_epoch"),
        "seconds": round(time.perf_counter() - start, 1),
    }
    run.write_metrics(results)
    overall = metrics["overall"]
    m = config.model
    run.write_model_card(
        title=f"MKCNet ({m.backbone}) on {config.data.dataset}",
        paper="Che et al., CVPR 2023 — Image Quality-aware Diagnosis via Meta-knowledge Co-embedding (seed 001)",
        body=(
            f"Preset `{config.preset}`, seed {config.seed}. Task Net: GAB `{m.gab}` on `{m.gab_input}` features, "
            f"assist `{m.assist}` from `{m.assist_from}`, quality head {m.quality_head}; Meta Learner {m.meta} "
            f"(mask by {m.mask_by}, L = {m.slice_length}, {config.train.meta_mode}). "
            f"{config.train.epochs} epochs, {len(train)} training images at {config.data.image_size} px. "
            f"Test AUC {overall['auc']:.3f}, accuracy {overall['accuracy']:.3f}, macro F1 {overall['macro_f1']:.3f}."
        ),
        metrics=results["test"],
    )
    return results
