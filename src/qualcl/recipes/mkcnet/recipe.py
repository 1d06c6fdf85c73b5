"""The MKCNet recipe on the shared driver: data → two-stage Task Net / Meta Learner training → evaluation."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from qualcl.data.table import ImageTable
from qualcl.metrics import confusion_matrix, diagnosis_metrics, stratified_diagnosis_metrics
from qualcl.recipes import ablation
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader
from qualcl.recipes.mkcnet.config import ABLATIONS, LQ_SWEEP, SPEC, SWEEP_BASES, MkcnetConfig, sweep_name
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
from qualcl.recipes.run_folder import ModelCard, strata_table

__all__ = ["MKCNET", "PAPER_EYEQ", "MkcnetData", "MkcnetRecipe", "run_ablation", "run_mkcnet"]

STAGE = "train"
PAPER = 'Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding", CVPR 2023'
#: The paper's EyeQ row of Table 2 for full MKCNet (AUC / ACC / F1, %), for reference: its ablations are plots only.
PAPER_EYEQ: tuple[float, float, float] = (83.83, 78.01, 59.68)


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


class MkcnetRecipe(Recipe[MkcnetConfig, MkcnetData, MkcnetTraining]):
    """MKCNet end to end.

    Stages: (1) data — the dataset's records split (official splits where they exist; the
    synthetic set is generated once into ``<run>/data``), images loaded at ``data.image_size``;
    (2) ``train`` — per epoch a Task Net pass and a Meta Learner pass (second-order meta step;
    under DDP both steps equal one process on the whole batch), validation AUC selecting the best
    epoch; (3) test evaluation — AUC (one-vs-one on probabilities, or the official hard-label AUC
    on binary sets with ``legacy_auc``), accuracy and macro F1, overall and per quality level.
    Plots: the stage's history (``train.png``), confusion matrix, embedding maps of ``f^{d*}`` and
    of the Meta Learner's outputs by joint label.

    Reference:
        Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding", CVPR 2023.
    """

    spec = SPEC
    paper = PAPER

    def load_data(self, ctx: RunContext[MkcnetConfig]) -> MkcnetData:
        """Split the records and load the images."""
        cfg = ctx.config.data
        root = ctx.dataset_root(cfg)
        train, val, test = load_splits(cfg, root, progress=ctx.image_progress)
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
            check_val_every_n_epoch=max(1, cfg.val_every),
            find_unused_parameters=True,  # each pass trains one of the two networks
            # the second-order meta step differentiates twice through the (synchronised) BatchNorm
            double_backward=module.meta is not None and cfg.meta_mode == "second_order",
            info={"epochs": cfg.epochs},
        )

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

    # ------------------------------------------------------------------ ablation
    def ablation_columns(self, config: MkcnetConfig) -> dict[str, str]:
        """Test AUC (also shown per stratum), accuracy and macro F1."""
        return {"auc": "AUC", "accuracy": "ACC", "macro_f1": "macro F1"}

    def ablation_notes(self, config: MkcnetConfig) -> str:
        """The protocol and the paper's EyeQ row for reference."""
        paper = " / ".join(f"{v / 100:.3f}" for v in PAPER_EYEQ)
        return (
            f"Backbone `{config.model.backbone}`, {config.train.epochs} epochs. Test AUC (one-vs-one on "
            "probabilities), accuracy and macro F1; the strata are the quality levels and `low_quality`, the "
            "low-quality test images together (paper Fig. 6 top). `@lqXX` variants keep XX % of the training LQ "
            "images, all HQ images (paper Fig. 5; curve `ablation_lq_sweep.png`). The paper shows its ablations "
            f"only as plots (Fig. 4–6); its EyeQ Table 2 row for full MKCNet, AUC / ACC / F1 {paper}, is given "
            "for reference: data, resolution and backbone differ."
        )

    def ablation_plots(
        self, config: MkcnetConfig, results: dict[str, dict[str, dict[str, list[float]]]], root: Path
    ) -> None:
        """Mean test AUC against the share of training LQ images kept, Vanilla and MKCNet (paper Fig. 5)."""
        series = {}
        for base in SWEEP_BASES:
            points = []
            for fraction in LQ_SWEEP:
                values = [
                    v for v in results.get(sweep_name(base, fraction), {}).get("overall", {}).get("auc", []) if v == v
                ]
                if values:
                    points.append((100 * fraction, sum(values) / len(values)))
            if len(points) >= 2:
                series[ABLATIONS[base].label.split(" (")[0]] = ([x for x, _ in points], [y for _, y in points])
        if series:
            plot_curves(
                series,
                root / "ablation_lq_sweep.png",
                title="Test AUC vs LQ images used in training",
                xlabel="% of LQ kept",
                ylabel="AUC",
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
                f"{STAGE}.png",
                "confusion_matrix.png",
                "diagnosis_feature_map.png",
                "meta_learner_map.png",
            ],
        )


#: The MKCNet recipe.
MKCNET = MkcnetRecipe()


#: ``MKCNET.run(config, out, *, callbacks=())``: the run end to end into the folder ``out``; re-running resumes.
run_mkcnet = MKCNET.run

#: ``run_ablation(config, out, *, seeds, variants, progress, run_missing)``: the declared ablation
#: (:data:`~qualcl.recipes.mkcnet.config.ABLATIONS`: the components and the LQ sweep) by the one runner
#: (:func:`qualcl.recipes.ablation.run_ablation`).
run_ablation = functools.partial(ablation.run_ablation, MKCNET)
