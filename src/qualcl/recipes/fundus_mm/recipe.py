"""The image–text fundus recipe on the shared driver: pre-training → zero-shot, recall, few-shot, fine-tuning."""

from __future__ import annotations

import copy
import functools
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl.data.degrade import raise_low_quality
from qualcl.data.table import ImageTable
from qualcl.evaluation import LinearProbe
from qualcl.functional import patchify, unpatchify
from qualcl.metrics import confusion_matrix, stratified_grading_metrics
from qualcl.models import CaptionTokenizer
from qualcl.recipes import ablation
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader, train_loader
from qualcl.recipes.fundus_mm.config import ABLATIONS, PAPER_TABLE, SPEC, EvalConfig, FundusMMConfig
from qualcl.recipes.fundus_mm.data import FundusMMData, PairDataset, load_fundus_mm_data
from qualcl.recipes.fundus_mm.evaluate import few_shot_indices, prompt_head_classify, prompt_head_fit, text_recall
from qualcl.recipes.fundus_mm.model import FundusMMNet, text_model_path
from qualcl.recipes.fundus_mm.modules import ImageTextPretraining, class_embeddings, zero_shot_logits
from qualcl.recipes.modules import GradingFineTuning, gathering
from qualcl.recipes.plots import plot_confusion, plot_heatmap, plot_image_grid
from qualcl.recipes.run_folder import ModelCard, count, strata_table

__all__ = ["FUNDUS_MM", "FundusMMRecipe", "FundusMMState", "run_ablation"]

PRETRAIN, FINETUNE = "pretrain", "finetune"
Ctx = RunContext[FundusMMConfig]
Embedded = dict[str, tuple[dict[str, Tensor], ImageTable]]


@dataclass
class FundusMMState:
    """The run's models: the tokenizer, the pre-training module (the network and its objectives), the fine-tuned one."""

    tokenizer: CaptionTokenizer
    pretrain: ImageTextPretraining
    finetune: GradingFineTuning | None = None


def _kappa_key(config: FundusMMConfig) -> str:
    """Quadratic-weighted kappa for ordered DR grades, Cohen's kappa for unordered categories."""
    return "qwk" if config.data.dataset in ("synthetic", "aptos") else "kappa"


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample std over the draws (NaN where a stratum has no image)."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": statistics.fmean(finite), "std": statistics.stdev(finite) if len(finite) > 1 else 0.0}


class FundusMMRecipe(Recipe[FundusMMConfig, FundusMMData, FundusMMState]):
    """Image–text self-supervision for fundus images, end to end.

    Stages: (1) data — images with per-image captions (synthetic) or class-level captions (the
    class's definition; APTOS, ODIR-5K, FIVES); (2) ``pretrain`` — ``L_con + L_img + L_cap`` on a
    masked ViT, a text transformer, cross-attention fusion and the MAE and caption decoders, the
    last epoch kept (validation zero-shot accuracy and losses are logged per epoch); (3)
    ``finetune`` — the ViT with a linear head, cross-entropy. Evaluation: zero-shot grading from the
    class prompts, image↔text recall@k, few-shot (linear probe and prompt-initialised head, k shots
    per class, mean ± std over draws) and the fine-tuned classifier — each overall, per quality
    stratum and at raised low-quality ratios. Plots: masked input / reconstruction / original, the
    zero-shot confusion matrix, image × class-prompt similarities, the loss curves per objective.
    """

    spec = SPEC
    paper = (
        'Nguyen, Sun and Choo, "Self-Supervised Multi-Modal Learning for Fundus Image Analysis Using Contrastive '
        'and Generative Learning" (Sungkyunkwan University)'
    )

    def load_data(self, ctx: Ctx) -> FundusMMData:
        """Generate (once) or read the images and their captions."""
        return load_fundus_mm_data(ctx.config.data, ctx.dataset_root(ctx.config.data), progress=ctx.image_progress)

    def setup(self, ctx: Ctx, data: FundusMMData) -> FundusMMState:
        """The tokenizer (training captions + prompts), the randomly initialised network and its objectives."""
        c = ctx.config
        assert data.train.caption is not None
        texts = list(data.train.caption) + [p for prompts in data.prompts for p in prompts]
        base = text_model_path(c.model) if c.model.text_tower == "pretrained" else None
        tokenizer = CaptionTokenizer.fit(texts, base=base)
        if ctx.run.writable:
            ctx.run.path("weights").mkdir(parents=True, exist_ok=True)
            ctx.run.path("weights", "tokenizer.json").write_text(json.dumps(tokenizer.state_dict()))
        net = FundusMMNet(c.model, tokenizer, c.data.image_size, gather_distributed=gathering(c.trainer))
        prompts = torch.stack([tokenizer.encode(p) for p in data.prompts])
        positives = c.train.class_level_positives
        class_level = data.class_level if positives is None else positives
        module = ImageTextPretraining(net, c.train, prompts, class_level=class_level, seed=c.seed)
        return FundusMMState(tokenizer, module)

    def _pairs(self, state: FundusMMState, table: ImageTable) -> PairDataset:
        assert table.caption is not None
        return PairDataset(table, state.tokenizer.encode(table.caption))

    def stages(self, config: FundusMMConfig) -> list[Stage]:
        """``pretrain``, then ``finetune`` unless ``eval.finetune_epochs`` is 0."""
        return [Stage(PRETRAIN, self.pretrain)] + [Stage(FINETUNE, self.finetune)] * (config.eval.finetune_epochs > 0)

    def pretrain(self, ctx: Ctx, data: FundusMMData, state: FundusMMState) -> None:
        """Image–text pre-training for a fixed schedule; the last epoch is kept (validation is logged only)."""
        config, cfg, net = ctx.config, ctx.config.train, state.pretrain.net
        dataset = self._pairs(state, data.train)
        # the collapse monitor's probe: 64 training images and, with the contrastive objective, their captions
        first = [dataset[i] for i in range(min(64, len(dataset)))]
        probe_images, probe_ids = (torch.stack([item[k] for item in first]) for k in (0, 1))

        def probe(_: L.LightningModule) -> tuple[Tensor, Tensor | None]:
            device = next(net.parameters()).device
            images = net.encode_image(probe_images.to(device))
            return images, net.encode_text(probe_ids.to(device)) if config.model.contrastive else None

        ctx.fit(
            PRETRAIN,
            state.pretrain,
            train_loader(dataset, cfg.batch_size, seed=config.seed),
            eval_loader(self._pairs(state, data.val), cfg.batch_size),
            weights={"fundus_mm": net, "fundus_mm_objectives": state.pretrain.objectives},
            max_epochs=cfg.epochs,
            monitor=None,  # a fixed schedule, the last epoch kept (MAE, CLIP): validation zero-shot is too noisy
            find_unused_parameters=not config.model.contrastive,  # the text tower is idle in MAE only
            info={"epochs": cfg.epochs},
            collapse=probe,
        )

    def finetune(self, ctx: Ctx, data: FundusMMData, state: FundusMMState) -> None:
        """A copy of the pre-trained ViT with a linear head (cross-entropy), the best epoch by validation kappa.

        The copy keeps the pre-trained encoder as it was: zero-shot, recall and the few-shot probes
        evaluate the pre-training, only the fine-tuned metrics the fine-tuned copy.
        """
        config, ev = ctx.config, ctx.config.eval
        state.finetune = GradingFineTuning(
            copy.deepcopy(state.pretrain.net.image),
            len(data.class_names),
            lr=ev.finetune_lr,
            weight_decay=config.train.weight_decay,
            epochs=ev.finetune_epochs,
            kappa=_kappa_key(config),
        )
        batch = min(config.train.batch_size, len(data.train))
        ctx.fit(
            FINETUNE,
            state.finetune,
            train_loader(PairDataset(data.train), batch, seed=config.seed),
            eval_loader(PairDataset(data.val), batch),
            weights={"fundus_mm_finetuned": state.finetune},
            max_epochs=ev.finetune_epochs,
            monitor="val/kappa",
            info={"epochs": ev.finetune_epochs},
        )

    # ------------------------------------------------------------------ evaluation
    def _embed(self, ctx: Ctx, state: FundusMMState, table: ImageTable) -> dict[str, Tensor]:
        net = state.pretrain.net

        def forward(batch: Any) -> dict[str, Tensor]:
            features = net.image(batch[0])  # the class tokens: the few-shot probes' features
            image = F.normalize(net.image_proj(features), dim=-1)
            return {"image": image.float(), "features": features.float(), "text": net.encode_text(batch[1]).float()}

        return ctx.predict(forward, self._pairs(state, table), batch_size=ctx.config.train.batch_size, modules=[net])

    def evaluate(self, ctx: Ctx, data: FundusMMData, state: FundusMMState) -> dict[str, Any]:
        """Zero-shot, recall@k, few-shot and fine-tuning metrics; per stratum and at raised low-quality ratios."""
        config, finetuned = ctx.config, state.finetune
        ev, num_classes = config.eval, len(data.class_names)
        net = state.pretrain.net.to(ctx.device)
        net.eval()
        classes = class_embeddings(net, state.pretrain.prompt_ids.to(ctx.device)).cpu()
        train = self._embed(ctx, state, data.train)
        settings = [("original", data.test)] + [
            (f"lq_{round(100 * r)}", raise_low_quality(data.test, r, seed=config.data.seed))
            for r in ev.lq_ratios
            if len(data.test.quality_names) > 1
        ]
        results: dict[str, Any] = {"zero_shot": {}, "few_shot": {}, "finetune": {}}

        def graded(preds: Tensor, table: ImageTable) -> dict[str, Any]:
            metrics = stratified_grading_metrics(preds, table.label, num_classes, table.quality, table.quality_names)
            metrics["overall"]["lq_ratio"] = table.lq_ratio
            return metrics

        embedded: Embedded = {}
        for name, table in settings:
            test = self._embed(ctx, state, table)
            embedded[name] = (test, table)
            logits = zero_shot_logits(test["image"], classes)
            results["zero_shot"][name] = graded(logits.argmax(1), table)
            if name == "original":
                assert table.caption is not None
                results["recall"] = text_recall(test["image"], test["text"], table.caption, ev.recall_k)
                if ctx.run.writable:
                    self._plots(ctx, data, state, table, logits)
            if finetuned is not None:
                preds = ctx.predict(
                    lambda b: {"p": finetuned(b[0]).argmax(dim=1)},
                    PairDataset(table),
                    batch_size=config.train.batch_size,
                    modules=[finetuned],
                )
                results["finetune"][name] = graded(preds["p"], table)
        scale = state.pretrain.objectives.logit_scale
        results["few_shot"] = self._few_shot(train, data.train, embedded, classes, scale, ev, _kappa_key(config))
        info: dict[str, Any] = {f"{split}_images": len(getattr(data, split)) for split in ("train", "val", "test")}
        info |= {"classes": list(data.class_names), "class_level_captions": data.class_level}
        info["vocabulary"] = state.tokenizer.vocab_size
        return {"test": results, "data": info, "finetune_best_epoch": ctx.records.get(FINETUNE, {}).get("best_epoch")}

    def _few_shot(
        self, train: dict[str, Tensor], train_table: ImageTable, settings: Embedded, classes: Tensor, scale: float,
        ev: EvalConfig, kappa: str,
    ) -> dict[str, Any]:  # fmt: skip
        """Linear probe and prompt head on ``k`` shots per class, each draw fitted once and tested in every setting."""
        num_classes = classes.shape[0]
        draws: dict[tuple[str, str, str], list[dict[str, Any]]] = {}  # (setting, "<k>_shot", head): one per draw
        for k in ev.shots:
            for seed in range(ev.few_shot_seeds):
                rows = few_shot_indices(train_table.label, k, num_classes, seed)
                labels = train_table.label[rows]
                probe = LinearProbe(num_classes).fit(train["features"][rows], labels)
                head = prompt_head_fit(train["image"][rows], labels, classes, scale=scale, epochs=ev.probe_epochs)
                for name, (test, t) in settings.items():
                    predictions = {
                        "linear_probe": probe.predict(test["features"]),
                        "prompt_head": prompt_head_classify(head, test["image"]),
                    }
                    for key, preds in predictions.items():
                        metrics = stratified_grading_metrics(preds, t.label, num_classes, t.quality, t.quality_names)
                        draws.setdefault((name, f"{k}_shot", key), []).append(metrics)
        out: dict[str, Any] = {}  # {setting: {"<k>_shot": {head: {stratum: {metric: {"mean", "std"}}}}}}
        for (name, shots, key), runs in draws.items():
            cells = {s: {m: _mean_std([r[s][m] for r in runs]) for m in ("accuracy", kappa)} for s in runs[0]}
            out.setdefault(name, {}).setdefault(shots, {})[key] = cells
        return out

    # ------------------------------------------------------------------ plots
    def _plots(self, ctx: Ctx, data: FundusMMData, state: FundusMMState, table: ImageTable, logits: Tensor) -> None:
        short = [n.replace("non-proliferative", "NP").replace("diabetic retinopathy", "DR") for n in data.class_names]
        plots, matrix = ctx.run.path("plots"), confusion_matrix(logits.argmax(1), table.label, len(short))
        plot_confusion(matrix, short, plots / "zero_shot_confusion.png", title="Zero-shot classification, test")
        order = torch.argsort(table.label * len(table) + torch.arange(len(table)))
        shown = torch.cat([order[table.label[order] == c][:4] for c in range(len(short))])
        plot_heatmap(
            logits[shown] / 100.0,
            plots / "prompt_similarity.png",
            title="Test image × class prompt cosine similarity",
            row_labels=[f"{short[int(table.label[i])]} · {table.quality_names[int(table.quality[i])]}" for i in shown],
            column_labels=short,
            xlabel="class prompts",
            ylabel="test image (true class · quality)",
        )
        net = state.pretrain.net
        if net.mae_decoder is None:
            return
        pick = torch.cat([torch.nonzero(table.quality == q).flatten()[:2] for q in range(len(table.quality_names))])
        images = (table.images[pick].float() / 255.0).to(ctx.device)
        assert table.caption is not None
        ids = state.tokenizer.encode([table.caption[i] for i in pick]).to(ctx.device)
        pred, mask = net.reconstruct(images, ids, generator=torch.Generator(device=ctx.device).manual_seed(0))
        p = net.image.patch_size
        side = table.images.shape[-1] // p  # patches per side
        keep = 1 - mask[..., None].to(images.dtype)
        patches = patchify(images, p)
        masked = unpatchify(patches * keep + 0.5 * (1 - keep), p, grid=(side, side))
        if net.config.norm_pix_loss:  # predictions are standardised patches: put each back on the image's scale
            mean, std = patches.mean(-1, keepdim=True), (patches.var(-1, keepdim=True) + 1e-6).sqrt()
            pred = pred * std + mean
        filled = unpatchify(patches * keep + pred * (1 - keep), p, grid=(side, side))
        plot_image_grid(
            torch.stack([masked, filled, images], dim=1).cpu(),
            plots / "reconstructions.png",
            title="Masked input · reconstruction (visible patches kept"
            + ("; predicted patches rescaled by the true patch mean and variance" if net.config.norm_pix_loss else "")
            + ") · original",
            column_titles=["masked", "reconstruction", "original"],
            row_titles=[table.quality_names[int(table.quality[i])] for i in pick],
        )

    # ------------------------------------------------------------------ ablation
    def ablation_columns(self, config: FundusMMConfig) -> dict[str, str]:
        """Zero-shot accuracy first (shown per quality level), then recall@k, few-shot and fine-tuned numbers."""
        k, shots, kappa = max(config.eval.recall_k), max(config.eval.shots), _kappa_key(config)
        return {
            "zero_shot": "zero-shot acc",
            "i2t": f"I→T R@{k}",
            "t2i": f"T→I R@{k}",
            "prompt_head": f"{shots}-shot acc (prompt head)",
            "linear_probe": f"{shots}-shot acc (linear probe)",
            "finetune_acc": "fine-tuned acc",
            "finetune_kappa": f"fine-tuned {kappa.upper() if kappa == 'qwk' else kappa}",
        }

    def ablation_cells(self, config: FundusMMConfig, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
        """Overall: zero-shot, recall@(largest k), few-shot (most shots), fine-tuned; per quality level: zero-shot."""
        test, nan, k = metrics["test"], float("nan"), max(config.eval.recall_k)
        few = test["few_shot"]["original"][f"{max(config.eval.shots)}_shot"]
        tuned = test["finetune"].get("original", {}).get("overall", {})
        zero = test["zero_shot"]["original"]
        overall = {
            "zero_shot": zero["overall"]["accuracy"],
            "i2t": test["recall"].get(f"i2t_r@{k}", nan),
            "t2i": test["recall"].get(f"t2i_r@{k}", nan),
            "prompt_head": few["prompt_head"]["overall"]["accuracy"]["mean"],
            "linear_probe": few["linear_probe"]["overall"]["accuracy"]["mean"],
            "finetune_acc": tuned.get("accuracy", nan),
            "finetune_kappa": tuned.get(_kappa_key(config), nan),
        }
        strata = {s: {"zero_shot": zero[s]["accuracy"]} for s in ablation.strata_order(zero) if s != "overall"}
        return {"overall": overall, **strata}

    def summary_sets(self, config: FundusMMConfig, metrics: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
        """The end-of-run summary's test sets: zero-shot accuracy per stratum, as tested and at each raised LQ ratio."""
        zero = metrics["test"]["zero_shot"]
        settings = ["original", *(f"lq_{round(100 * r)}" for r in config.eval.lq_ratios)]
        return {
            setting: {stratum: {"zero_shot": c["accuracy"], "n": c["n"]} for stratum, c in zero[setting].items()}
            for setting in settings
            if setting in zero
        }

    def ablation_notes(self, config: FundusMMConfig) -> str:
        """The encoder and schedule, and the paper's Table 1 for the rows it has."""
        rows = "; ".join(f"{ABLATIONS[n].label.split(' (')[0]} {' / '.join(cells)}" for n, cells in PAPER_TABLE.items())
        return (
            f"Encoder `{config.model.encoder}`, {count(config.train.epochs, 'pre-training epoch')}. The paper's Table "
            f"1 (zero-shot ODIR acc % / few-shot FIVES acc % / fine-tuned APTOS kappa × 100: {rows}) is on other data "
            "and models."
        )

    def model_card(self, ctx: Ctx, data: FundusMMData, state: FundusMMState, results: dict[str, Any]) -> ModelCard:
        """Headline zero-shot / few-shot / fine-tuning / recall numbers and the per-stratum table."""
        config, m = ctx.config, ctx.config.model
        test, kappa = results["test"], _kappa_key(config)
        biggest = f"{max(config.eval.shots)}_shot"
        few = test["few_shot"]["original"][biggest]["prompt_head"]
        headline = {
            "zero-shot acc": test["zero_shot"]["original"]["overall"]["accuracy"],
            f"{biggest.replace('_', '-')} acc (prompt head)": few["overall"]["accuracy"]["mean"],
            "I→T R@1": test["recall"].get("i2t_r@1", float("nan")),
        }
        if test["finetune"]:
            headline[f"fine-tuned {kappa}"] = test["finetune"]["original"]["overall"][kappa]
        summary = (
            f"Preset `{config.preset}`, seed {config.seed}, dataset `{config.data.dataset}` at "
            f"{config.data.image_size} px ({'class-level' if data.class_level else 'per-image'} captions, vocabulary "
            f"{state.tokenizer.vocab_size}). `{m.encoder}`, mask ratio {m.mask_ratio}; objectives: contrastive "
            f"{m.contrastive}, masked image {m.mim}, caption `{m.caption}`; fusion {m.fusion}. "
            f"{count(config.train.epochs, 'epoch')} on {len(data.train)} images (the last epoch is kept)."
        )
        columns: dict[str, dict[str, dict[str, float]]] = {}
        for label, block in (("zero-shot", test["zero_shot"]), ("fine-tuned", test["finetune"])):
            for setting, strata in block.items():
                name = label if setting == "original" else f"{label}, LQ {setting.removeprefix('lq_')} %"
                columns[name] = {k: {**v, "n": v.get("n", 0)} for k, v in strata.items()}
        table = strata_table(columns, {"accuracy": "accuracy", kappa: kappa.upper() if kappa == "qwk" else "kappa"})
        plots = [f"{PRETRAIN}.png", "reconstructions.png", "zero_shot_confusion.png", "prompt_similarity.png"]
        title = f"Image–text pre-training ({m.encoder}) on {config.data.dataset}"
        return ModelCard(
            title, self.paper, summary, headline, table, plots + [f"{FINETUNE}.png"] * bool(test["finetune"])
        )


#: The image–text fundus recipe.
FUNDUS_MM = FundusMMRecipe()

#: ``run_ablation(config, out, *, seeds, variants, progress, run_missing)``: the declared ablation by the one runner.
run_ablation = functools.partial(ablation.run_ablation, FUNDUS_MM)
