"""The MKCNet recipe on the shared driver: data → two-stage Task Net / Meta Learner training → evaluation."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from qualcl.metrics import confusion_matrix, diagnosis_metrics, stratified_diagnosis_metrics
from qualcl.recipes import ablation
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader
from qualcl.recipes.mkcnet.config import ABLATIONS, LQ_SWEEP, SPEC, SWEEP_BASES, MkcnetConfig, sweep_name
from qualcl.recipes.mkcnet.data import MKCNET_QUALITY, MkcnetData, TwoPassBatchSampler, load_splits, mkcnet_sizes
from qualcl.recipes.mkcnet.model import build_meta_learner, build_task_net
from qualcl.recipes.mkcnet.modules import MkcnetTraining
from qualcl.recipes.modules import gathering
from qualcl.recipes.plots import plot_confusion, plot_curves, plot_embedding
from qualcl.recipes.run_folder import ModelCard, count, strata_table

__all__ = ["MKCNET", "MkcnetRecipe", "run_ablation", "run_mkcnet"]

STAGE = "train"
Ctx = RunContext[MkcnetConfig]


class MkcnetRecipe(Recipe[MkcnetConfig, MkcnetData, MkcnetTraining]):
    """MKCNet end to end: data, one training stage, test metrics and plots.

    The records are split, one ``train`` stage of two-pass epochs (:class:`MkcnetTraining`) runs
    with validation AUC selecting the best epoch, then test AUC (one-vs-one on probabilities, or the
    official hard-label AUC on binary sets with ``legacy_auc``), accuracy and macro F1 overall, per
    quality level and on the low-quality images; plots of the history, the confusion matrix and the
    PCA maps of ``f^{d*}`` and of the Meta Learner's outputs by joint label.

    Reference:
        Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding", CVPR 2023.
    """

    spec, paper = SPEC, 'Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding", CVPR 2023'

    def load_data(self, ctx: Ctx) -> MkcnetData:
        """Split the records and load the images."""
        cfg = ctx.config.data
        return load_splits(cfg, ctx.dataset_root(cfg), progress=ctx.image_progress)

    def setup(self, ctx: Ctx, data: MkcnetData) -> MkcnetTraining:
        """Task Net and Meta Learner (randomly initialised), in the training module."""
        c, m, (n_d, n_q) = ctx.config, ctx.config.model, mkcnet_sizes(data.train)
        return MkcnetTraining(
            build_task_net(m, c.data.channels, n_d, n_q),
            build_meta_learner(m, c.data.channels, n_d, n_q),
            c.train,
            slice_length=m.slice_length,
            mask_by=m.mask_by,
            legacy_auc=c.legacy_auc,
            gather_distributed=gathering(c.trainer),
        )

    def stages(self, config: MkcnetConfig) -> list[Stage]:
        """One stage, ``train``."""
        return [Stage(STAGE, self.train)]

    def train(self, ctx: Ctx, data: MkcnetData, module: MkcnetTraining) -> None:
        """The two-pass epochs (one pass without a Meta Learner), validation AUC selecting the best epoch."""
        cfg, dataset = ctx.config.train, data.dataset("train")
        sampler = TwoPassBatchSampler(len(dataset), cfg.batch_size, 1 if module.meta is None else 2, ctx.config.seed)
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
            double_backward=module.meta is not None and cfg.meta_mode == "second_order",  # through BatchNorm
            info={"epochs": cfg.epochs},
        )

    def evaluate(self, ctx: Ctx, data: MkcnetData, module: MkcnetTraining) -> dict[str, Any]:
        """AUC / ACC / F1 overall, per quality level and on the low-quality images."""
        config, test = ctx.config, data.test

        def forward(batch: Any) -> dict[str, Tensor]:
            logits, feature = module.task.forward_with_feature(batch[0])
            out = {"probs": torch.softmax(logits.diagnosis.float(), dim=1), "features": feature}
            if module.meta is not None:
                out["meta_logits"] = module.meta.logits(batch[0])
            return out

        out = ctx.predict(forward, data.dataset("test"), batch_size=config.train.batch_size, modules=[module])
        probs, low, legacy = out["probs"], test.low_quality, config.legacy_auc
        metrics = stratified_diagnosis_metrics(probs, test.label, test.quality, test.quality_names, legacy_auc=legacy)
        metrics["low_quality"] = diagnosis_metrics(probs[low], test.label[low], legacy_auc=legacy)
        if ctx.run.writable:  # the confusion matrix, the PCA maps of f^{d*} and M_φ(x) by joint label
            n_d, n_q = mkcnet_sizes(test)
            path = functools.partial(ctx.run.path, "plots")
            matrix = confusion_matrix(probs.argmax(1), test.label, n_d)
            title = f"Diagnosis, test ({config.data.dataset})"
            plot_confusion(matrix, [str(d) for d in range(n_d)], path("confusion_matrix.png"), title=title)
            joint = test.codes[MKCNET_QUALITY] * n_d + test.label
            names = [f"d{j % n_d} q{j // n_d}" for j in range(n_d * n_q)]
            for key, file, what in (
                ("features", "diagnosis_feature_map", "Task Net f^{d*}"),
                ("meta_logits", "meta_learner_map", "Meta Learner outputs M_φ(x)"),
            ):
                if key in out:  # the Meta Learner's map only where the variant has one
                    title = f"{what} of test images by joint label"
                    plot_embedding(out[key], joint, names, path(f"{file}.png"), title=title)
        sizes = {f"{split}_images": len(getattr(data, split)) for split in ("train", "val", "test")}
        lq = float(data.train.low_quality.double().mean())
        summary = {**sizes, "train_lq_fraction": lq, "normalisation": {"mean": list(data.mean), "std": list(data.std)}}
        return {"test": metrics, "data": summary, "best_epoch": ctx.records.get(STAGE, {}).get("best_epoch")}

    # ------------------------------------------------------------------ ablation
    def ablation_columns(self, config: MkcnetConfig) -> dict[str, str]:
        """Test AUC (also shown per stratum), accuracy and macro F1."""
        return {"auc": "AUC", "accuracy": "ACC", "macro_f1": "macro F1"}

    def ablation_notes(self, config: MkcnetConfig) -> str:
        """The protocol and the paper's EyeQ row (Table 2: 83.83 / 78.01 / 59.68 %) for reference."""
        return (
            f"Backbone `{config.model.backbone}`, {count(config.train.epochs, 'epoch')}. Test AUC (one-vs-one on "
            "probabilities), accuracy and macro F1; the strata are the quality levels and `low_quality`, the "
            "low-quality test images together (paper Fig. 6 top). `@lqXX` variants keep XX % of the training LQ "
            "images, all HQ images (paper Fig. 5; curve `ablation_lq_sweep.png`). The paper shows its ablations only "
            "as plots (Fig. 4–6); its EyeQ Table 2 row for full MKCNet, AUC / ACC / F1 0.838 / 0.780 / 0.597, is "
            "given for reference: data, resolution and backbone differ."
        )

    def ablation_plots(
        self, config: MkcnetConfig, results: dict[str, dict[str, dict[str, list[float]]]], root: Path
    ) -> None:
        """Mean test AUC against the share of training LQ images kept, Vanilla and MKCNet (paper Fig. 5)."""
        series = {}
        for base in SWEEP_BASES:
            aucs = {100 * f: results.get(sweep_name(base, f), {}).get("overall", {}).get("auc", []) for f in LQ_SWEEP}
            finite = {x: [v for v in values if v == v] for x, values in aucs.items()}  # a NaN seed does not count
            points = {x: sum(v) / len(v) for x, v in finite.items() if v}
            if len(points) >= 2:
                series[ABLATIONS[base].label.split(" (")[0]] = (list(points), list(points.values()))
        if series:
            title = "Test AUC vs LQ images used in training"
            plot_curves(series, root / "ablation_lq_sweep.png", title=title, xlabel="% of LQ kept", ylabel="AUC")

    def model_card(self, ctx: Ctx, data: MkcnetData, module: MkcnetTraining, results: dict[str, Any]) -> ModelCard:
        """Headline AUC / ACC / F1, the strata table, the plots."""
        c, m, overall = ctx.config, ctx.config.model, results["test"]["overall"]
        summary = (
            f"Preset `{c.preset}`, seed {c.seed}, dataset `{c.data.dataset}`. Task Net (`{m.backbone}`): GAB `{m.gab}` "
            f"on `{m.gab_input}` features, assist `{m.assist}` from `{m.assist_from}`, quality head {m.quality_head}; "
            f"Meta Learner {m.meta} (mask by {m.mask_by}, L = {m.slice_length}, {c.train.meta_mode}). "
            f"{count(c.train.epochs, 'epoch')} on {len(data.train)} training images at {c.data.image_size} px; best "
            f"epoch {results.get('best_epoch')} by validation AUC."
        )
        table = strata_table({"test": results["test"]}, {"auc": "AUC", "accuracy": "ACC", "macro_f1": "F1"})
        headline = {"test AUC": overall["auc"], "test accuracy": overall["accuracy"], "macro F1": overall["macro_f1"]}
        plots = [f"{STAGE}.png", "confusion_matrix.png", "diagnosis_feature_map.png", "meta_learner_map.png"]
        return ModelCard(f"MKCNet ({m.backbone}) on {c.data.dataset}", self.paper, summary, headline, table, plots)


MKCNET = MkcnetRecipe()
#: ``MKCNET.run(config, out, *, callbacks=(), overwrite=False)``: the run end to end into ``out``; re-running resumes.
run_mkcnet = MKCNET.run
#: ``run_ablation(config, out, *, seeds, variants, progress, run_missing)``: the components and the LQ sweep.
run_ablation = functools.partial(ablation.run_ablation, MKCNET)
