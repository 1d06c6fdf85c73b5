"""The MKCNet recipe on the shared driver: data → two-stage Task Net / Meta Learner training → evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from qualcl.data.table import ImageTable
from qualcl.metrics import confusion_matrix, diagnosis_metrics, stratified_diagnosis_metrics
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader
from qualcl.recipes.mkcnet.config import PRESETS, MkcnetConfig, dataset_settings
from qualcl.recipes.mkcnet.data import (
    MKCNET_QUALITY,
    MkcnetDataset,
    TwoPassBatchSampler,
    load_splits,
    mkcnet_sizes,
    normalisation,
)
from qualcl.recipes.mkcnet.model import build_meta_learner, build_task_net
from qualcl.recipes.mkcnet.modules import MkcnetTraining
from qualcl.recipes.modules import gathering
from qualcl.recipes.plots import plot_confusion, plot_curves, plot_embedding
from qualcl.recipes.run_folder import ModelCard, RunFolder, strata_table

__all__ = ["MKCNET", "MkcnetData", "MkcnetRecipe", "run_mkcnet"]

STAGE = "train"
PAPER = 'Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding", CVPR 2023'


class MkcnetData(NamedTuple):
    """The run's splits and their normalised datasets."""

    train: ImageTable
    val: ImageTable
    test: ImageTable
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def dataset(self, split: str) -> MkcnetDataset:
        """The normalised dataset of ``split``."""
        table: ImageTable = getattr(self, split)
        return MkcnetDataset(table, self.mean, self.std)


@dataclass
class _Plots:
    run: RunFolder

    def history(self) -> None:
        rows = self.run.read_history(STAGE)
        if not rows or not self.run.writable:
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
            self.run.path("plots", "training_curves.png"),
            title="MKCNet training",
            xlabel="epoch",
            ylabel="focal loss",
            secondary={"val AUC": (epochs, [r["val_auc"] for r in rows])},
            secondary_label="AUC",
        )
        if "aux_entropy" in rows[0]:
            plot_curves(
                {"H(mean y_ω)": (epochs, [r["aux_entropy"] for r in rows])},
                self.run.path("plots", "meta_entropy.png"),
                title="Entropy of the batch-averaged auxiliary targets",
                xlabel="epoch",
                ylabel="nats",
                secondary={"‖meta gradient‖": (epochs, [r["meta_grad_norm"] for r in rows])},
                secondary_label="norm",
            )


class MkcnetRecipe(Recipe[MkcnetConfig, MkcnetData, MkcnetTraining]):
    """MKCNet end to end.

    Stages: (1) data — the dataset's records split (official splits where they exist; the
    synthetic set is generated once into ``<run>/data``), images loaded at ``data.image_size``;
    (2) ``train`` — per epoch a Task Net pass and a Meta Learner pass (second-order meta step,
    its meta gradient all-reduced under DDP), validation AUC selecting the best epoch; (3) test
    evaluation — AUC (one-vs-one on probabilities, or the official hard-label AUC on binary sets
    with ``legacy_auc``), accuracy and macro F1, overall and per quality level. Plots: curves,
    confusion matrix, embedding maps of ``f^{d*}`` and of the Meta Learner's outputs by joint label.

    Reference:
        Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding", CVPR 2023.
    """

    name = "mkcnet"
    paper = PAPER
    config_class = MkcnetConfig
    presets = PRESETS
    datasets = ("synthetic", "eyeq", "deepdrid", "drac", "cxr-iqad", "ct-iqad")
    data_help = "dataset folder; cxr-iqad wants kermany/ and nih/ inside it, ct-iqad hq/ and lq/"
    set_example = "train.epochs=5"

    def dataset_settings(self, dataset: str, preset: str) -> dict[str, Any]:
        """The official code's per-dataset settings (channels, normalisation, L, rates)."""
        return dataset_settings(dataset, preset)

    def check(self, config: MkcnetConfig) -> None:
        """Real datasets need their folder; fixed normalisation needs one value per channel."""
        cfg = config.data
        if cfg.dataset != "synthetic" and cfg.data_dir is None:
            raise ValueError(f"--data DIR is required with --dataset {cfg.dataset}")
        if cfg.mean and (len(cfg.mean) != cfg.channels or len(cfg.std) != cfg.channels):
            raise ValueError(f"data.mean and data.std need {cfg.channels} values each")

    def load_data(self, ctx: RunContext[MkcnetConfig]) -> MkcnetData:
        """Split the records and load the images."""
        cfg = ctx.config.data
        root = ctx.dataset_root(cfg)
        train, val, test = load_splits(cfg, root, progress=ctx.progress)
        mean, std = normalisation(cfg, train)
        return MkcnetData(train, val, test, mean, std)

    def setup(self, ctx: RunContext[MkcnetConfig], data: MkcnetData) -> MkcnetTraining:
        """Task Net and Meta Learner (randomly initialised), in the training module."""
        config = ctx.config
        n_d, n_q = mkcnet_sizes(data.train)
        task = build_task_net(config.model, config.data.channels, n_d, n_q)
        meta = build_meta_learner(config.model, config.data.channels, n_d, n_q)
        return MkcnetTraining(
            task,
            meta,
            config.train,
            slice_length=config.model.slice_length,
            mask_by=config.model.mask_by,
            legacy_auc=config.legacy_auc,
            gather_distributed=gathering(config.trainer),
        )

    def stages(self, config: MkcnetConfig) -> list[Stage]:
        """One stage, ``train``."""
        return [Stage(STAGE, self.train)]

    def train(self, ctx: RunContext[MkcnetConfig], data: MkcnetData, module: MkcnetTraining) -> None:
        """The two-pass epochs, validation AUC selecting the best epoch."""
        cfg = ctx.config.train
        dataset = data.dataset("train")
        sampler = TwoPassBatchSampler(
            len(dataset), cfg.batch_size, 2 if module.meta is not None else 1, ctx.config.seed
        )
        ctx.fit(
            STAGE,
            module,
            DataLoader(dataset, batch_sampler=sampler),
            eval_loader(data.dataset("val"), cfg.batch_size),
            weights={"mkcnet": module},
            max_epochs=cfg.epochs,
            monitor="val/auc",
            history="epoch_log",
            check_val_every_n_epoch=max(1, cfg.val_every),
            find_unused_parameters=True,  # each pass trains one of the two networks
            # the second-order meta step differentiates twice through the (synchronised) BatchNorm
            double_backward=module.meta is not None and cfg.meta_mode == "second_order",
            info={"epochs": cfg.epochs},
        )
        _Plots(ctx.run).history()

    def evaluate(self, ctx: RunContext[MkcnetConfig], data: MkcnetData, module: MkcnetTraining) -> dict[str, Any]:
        """AUC / ACC / F1 overall, per quality level and on the low-quality images."""
        config, test = ctx.config, data.test

        def forward(batch: Any) -> dict[str, Tensor]:
            logits, feature = module.task.forward_with_feature(batch[0])
            out = {"probs": torch.softmax(logits.diagnosis.float(), dim=1), "features": feature}
            if module.meta is not None:
                out["meta_logits"] = module.meta.logits(batch[0])
            return out

        out = ctx.predict(forward, data.dataset("test"), batch_size=config.train.batch_size, modules=[module])
        metrics = stratified_diagnosis_metrics(
            out["probs"], test.label, test.quality, test.quality_names, legacy_auc=config.legacy_auc
        )
        low = test.low_quality
        metrics["low_quality"] = diagnosis_metrics(out["probs"][low], test.label[low], legacy_auc=config.legacy_auc)
        if ctx.run.writable:
            self._plots(ctx, test, out)
        record = ctx.records.get(STAGE, {})
        return {
            "test": metrics,
            "data": {
                "train_images": len(data.train),
                "val_images": len(data.val),
                "test_images": len(test),
                "train_lq_fraction": float(data.train.low_quality.double().mean()),
                "normalisation": {"mean": list(data.mean), "std": list(data.std)},
            },
            "best_epoch": record.get("best_epoch"),
        }

    def _plots(self, ctx: RunContext[MkcnetConfig], test: ImageTable, out: dict[str, Tensor]) -> None:
        n_d, n_q = mkcnet_sizes(test)
        plot_confusion(
            confusion_matrix(out["probs"].argmax(1), test.label, n_d),
            [str(d) for d in range(n_d)],
            ctx.run.path("plots", "confusion_matrix.png"),
            title=f"Diagnosis, test ({ctx.config.data.dataset})",
        )
        joint = test.codes[MKCNET_QUALITY] * n_d + test.label
        joint_names = [f"d{j % n_d} q{j // n_d}" for j in range(n_d * n_q)]
        plot_embedding(
            out["features"],
            joint,
            joint_names,
            ctx.run.path("plots", "diagnosis_feature_map.png"),
            title="Task Net f^{d*} of test images by joint label",
        )
        if "meta_logits" in out:
            plot_embedding(
                out["meta_logits"],
                joint,
                joint_names,
                ctx.run.path("plots", "meta_learner_map.png"),
                title="Meta Learner outputs M_φ(x) of test images by joint label",
            )

    def model_card(
        self, ctx: RunContext[MkcnetConfig], data: MkcnetData, module: MkcnetTraining, results: dict[str, Any]
    ) -> ModelCard:
        """Headline AUC / ACC / F1, the strata table, the plots."""
        config, m = ctx.config, ctx.config.model
        overall = results["test"]["overall"]
        summary = (
            f"Preset `{config.preset}`, seed {config.seed}, dataset `{config.data.dataset}`. Task Net "
            f"(`{m.backbone}`): GAB `{m.gab}` on `{m.gab_input}` features, assist `{m.assist}` from "
            f"`{m.assist_from}`, quality head {m.quality_head}; Meta Learner {m.meta} (mask by {m.mask_by}, "
            f"L = {m.slice_length}, {config.train.meta_mode}). {config.train.epochs} epochs on "
            f"{len(data.train)} training images at {config.data.image_size} px; best epoch "
            f"{results.get('best_epoch')} by validation AUC."
        )
        table = strata_table({"test": results["test"]}, {"auc": "AUC", "accuracy": "ACC", "macro_f1": "F1"})
        return ModelCard(
            title=f"MKCNet ({m.backbone}) on {config.data.dataset}",
            paper=PAPER,
            summary=summary,
            headline={
                "test AUC": overall["auc"],
                "test accuracy": overall["accuracy"],
                "macro F1": overall["macro_f1"],
            },
            table=table,
            plots=[
                "training_curves.png",
                "meta_entropy.png",
                "confusion_matrix.png",
                "diagnosis_feature_map.png",
                "meta_learner_map.png",
            ],
        )


#: The MKCNet recipe.
MKCNET = MkcnetRecipe()


#: ``MKCNET.run(config, out, *, callbacks=())``: the run end to end into the folder ``out``; re-running resumes.
run_mkcnet = MKCNET.run
