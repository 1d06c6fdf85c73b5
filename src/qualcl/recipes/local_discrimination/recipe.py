"""The local-discrimination recipe on the shared driver: LD pre-training → shape-guided LD → segmentation transfer."""

from __future__ import annotations

import copy
import functools
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from qualcl.data.loading import FUNDUS_QUALITY
from qualcl.data.views import LocalDiscriminationViews
from qualcl.evaluation import LandmarkPrediction, landmark_template, localise_landmarks
from qualcl.functional import grid_items, patch_grid
from qualcl.metrics import binarize, landmark_metrics, stratified_segmentation_metrics, stratify
from qualcl.recipes import ablation
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader, train_loader
from qualcl.recipes.local_discrimination.config import SPEC, LocalDiscriminationConfig
from qualcl.recipes.local_discrimination.data import (
    LDData,
    SegmentationDataset,
    dataset_tasks,
    load_ld_data,
    normalised,
)
from qualcl.recipes.local_discrimination.model import LDNet, LDOutput, SegmentationNet
from qualcl.recipes.local_discrimination.modules import (
    LDPretraining,
    SegmentationTransfer,
    ShapeGuidedTraining,
    build_losses,
)
from qualcl.recipes.local_discrimination.plots import cluster_rgb, heat_rgb, mark_landmarks, overlay_rgb, pca_rgb
from qualcl.recipes.modules import gathering
from qualcl.recipes.plots import plot_grouped_bars, plot_image_grid, plot_variant_dots
from qualcl.recipes.run_folder import ModelCard, count, strata_table

__all__ = ["LOCAL_DISCRIMINATION", "LDState", "LocalDiscriminationRecipe", "run_ablation", "run_local_discrimination"]

PAPER = (
    'Chen et al., "Unsupervised Local Discrimination for Medical Images", IEEE TPAMI 45(12), 2023 '
    "(arXiv 2108.09440; code HuaiChen-1994/LDLearning)"
)
LANDMARKS = ("disc", "fovea")
Ctx = RunContext[LocalDiscriminationConfig]
Located = dict[str, LandmarkPrediction]


@dataclass
class LDState:
    """The run's networks: the LD net, its stage-1 weights, the shape-guided net, ``{task: {phase: net}}``."""

    net: LDNet
    stage1: dict[str, Tensor] | None = None
    shape: LDNet | None = None
    segmentation: dict[str, dict[str, SegmentationNet]] = field(default_factory=dict)


def _views(config: LocalDiscriminationConfig, images: Tensor, seed: int) -> tuple[LocalDiscriminationViews, Any]:
    """The pre-training views of ``images`` drawn from ``seed``, and their training loader."""
    p = config.pretrain
    views = LocalDiscriminationViews(
        images,
        size=config.data.image_size,
        length=p.steps_per_epoch * p.batch_size,
        seed=seed,
        crop_scale=(p.crop_scale, 1.0),
        rotation=p.rotation,
    )
    name = "pretrain.batch_size"
    return views, train_loader(views, p.batch_size, seed=config.seed, collate_fn=views.collate, name=name)


class LocalDiscriminationRecipe(Recipe[LocalDiscriminationConfig, LDData, LDState]):
    """Unsupervised local discrimination (Chen et al., TPAMI 2023), then segmentation transfer, landmarks, shape prior.

    Stages: ``pretrain_pd`` (patch discrimination + mixup), ``pretrain_ld`` (+ region
    discrimination and entropy), ``shape`` (LD with an adversarial vessel-shape prior on cluster
    channel 0, from the stage-1 weights), then per task ``transfer_<task>_frozen`` and
    ``transfer_<task>_finetuned`` (soft Dice; the best frozen epoch is fine-tuned). Baselines swap the
    pre-training (``pretrain.method``: ``simclr``, ``dense``, ``ld_stage1``, ``none``). Evaluation:
    per-image Dice of each task and phase overall and per quality stratum, one-shot landmark
    localisation (qualcl's design), and the shape-guided cluster's Dice.
    """

    spec, paper = SPEC, PAPER

    def load_data(self, ctx: Ctx) -> LDData:
        """Generate (once) or read the images, masks and landmarks."""
        d = ctx.config.data
        return load_ld_data(d, ctx.dataset_root(d), ctx.config.transfer.tasks, progress=ctx.image_progress)

    def setup(self, ctx: Ctx, data: LDData) -> LDState:
        """The LD network, randomly initialised."""
        m = ctx.config.model
        return LDState(LDNet(m.encoder, m.dim, m.clusters))

    def stages(self, config: LocalDiscriminationConfig) -> list[Stage]:
        """Pre-training stages of the method, the shape-guided stage, two transfer stages per task."""
        p = config.pretrain  # LD: stage 1 ("pd"), then stage 2 ("ld") when it has epochs; or a baseline, or none
        ld = ["pd", "ld"] if p.stage2_epochs else ["pd"]
        methods = {"ld": ld, "ld_stage1": ["pd"], "none": []}.get(p.method, [p.method])
        stages = [Stage(f"pretrain_{m}", functools.partial(self.pretrain, method=m)) for m in methods]
        if config.shape.enabled and config.data.dataset == "synthetic" and "pd" in methods:
            stages.append(Stage("shape", self.shape_guided))
        for task, phase in itertools.product(self._tasks(config), self._phases(config)):
            stages.append(Stage(f"transfer_{task}_{phase}", functools.partial(self.transfer, task=task, phase=phase)))
        return stages

    @staticmethod
    def _tasks(config: LocalDiscriminationConfig) -> tuple[str, ...]:
        """The transfer's tasks: ``transfer.tasks``, else every mask the dataset has."""
        return config.transfer.tasks or dataset_tasks(config.data.dataset)

    @staticmethod
    def _phases(config: LocalDiscriminationConfig) -> list[str]:
        """The transfer's phases: ``frozen``, then ``finetuned`` unless it has no epochs."""
        return ["frozen", "finetuned"] if config.transfer.finetune_epochs else ["frozen"]

    # ------------------------------------------------------------------ stages
    def pretrain(self, ctx: Ctx, data: LDData, state: LDState, *, method: str) -> None:
        """One self-supervised stage on the unlabelled training images."""
        config, p, net = ctx.config, ctx.config.pretrain, state.net
        epochs = p.stage2_epochs if method == "ld" else p.stage1_epochs
        views, loader = _views(config, data.pretrain, config.seed)
        module = LDPretraining(net, views, p, method, gather_distributed=gathering(config.trainer))
        weights: dict[str, nn.Module] = {"ld_stage1" if method == "pd" else f"ld_{method}": net}
        if module.projection is not None:
            weights["projection"] = module.projection
        probe_images = normalised(data.pretrain[:16])

        def probe(_: L.LightningModule) -> tuple[Tensor, Tensor]:
            # the collapse monitor's probe: 8 x 8 patch features of 16 images, and of their mirror images
            x = probe_images.to(next(net.parameters()).device)
            items = grid_items(patch_grid(net(x).embeddings))
            return items, grid_items(patch_grid(net(x.flip(-1)).embeddings).flip(-1))

        ctx.fit(
            f"pretrain_{method}",
            module,
            loader,
            weights=weights,
            max_epochs=epochs,
            find_unused_parameters=True,  # stage 1 leaves the clustering branch unused, SimCLR the decoder
            info={"epochs": epochs, "steps_per_epoch": p.steps_per_epoch},
            collapse=probe,
        )
        if method == "pd":
            state.stage1 = copy.deepcopy(net.state_dict())

    def shape_guided(self, ctx: Ctx, data: LDData, state: LDState) -> None:
        """LD with the adversarial vessel-shape prior, from the stage-1 weights, ``K = shape.clusters``."""
        config, shape = ctx.config, ctx.config.shape
        net = LDNet(config.model.encoder, config.model.dim, shape.clusters)
        if state.stage1 is not None:
            own = {k: v for k, v in state.stage1.items() if not k.startswith("clustering.")}
            net.load_state_dict(own, strict=False)  # the clustering branch (K differs) starts afresh, as the code's
        views, loader = _views(config, data.pretrain, config.seed + 7)
        gather = gathering(config.trainer)
        module = ShapeGuidedTraining(net, views, data.priors, config.pretrain, shape, gather_distributed=gather)
        weights = {"shape_net": net, "shape_discriminator": module.discriminator}
        info = {"epochs": shape.epochs}
        ctx.fit(
            "shape", module, loader, weights=weights, max_epochs=shape.epochs, find_unused_parameters=True, info=info
        )
        state.shape = net

    def transfer(self, ctx: Ctx, data: LDData, state: LDState, *, task: str, phase: str) -> None:
        """Soft-Dice segmentation of ``task`` from the encoder: frozen, or fine-tuned from the best frozen epoch."""
        config, t, frozen = ctx.config, ctx.config.transfer, phase == "frozen"
        nets = state.segmentation.setdefault(task, {})
        net = SegmentationNet(copy.deepcopy(state.net.encoder)) if frozen else copy.deepcopy(nets["frozen"])
        train = SegmentationDataset(data.train, task, train=True, seed=config.seed)
        net.train()  # the copy arrives in the mode its source was left in; the module sets the modes per epoch
        losses = build_losses(config.pretrain, gather=gathering(config.trainer), per_image_dice=t.per_image_dice)
        module = SegmentationTransfer(net, lr=t.lr, frozen=frozen, loss=losses["dice"])
        epochs = t.frozen_epochs if frozen else t.finetune_epochs
        ctx.fit(
            f"transfer_{task}_{phase}",
            module,
            train_loader(train, min(t.batch_size, len(train)), seed=config.seed, name="transfer.batch_size"),
            eval_loader(SegmentationDataset(data.val, task), t.batch_size),
            weights={f"segmentation_{task}_{phase}": net},
            max_epochs=epochs,
            monitor="val/dice",
            info={"epochs": epochs, "labelled": len(train)},
        )
        net.encoder.requires_grad_(True)
        nets[phase] = net

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Overall test Dice per task and phase, and the landmarks' mean radial errors."""
        test = metrics["test"]
        out = {f"dice {task} ({phase})": strata["overall"]["dice"] for (task, phase), strata in _parts(test).items()}
        out.update({f"mre {name} px": rows["overall"]["mre"] for name, rows in test.get("landmarks", {}).items()})
        if "shape_guided" in test:
            out["dice vessels (shape-guided cluster 0)"] = test["shape_guided"]["overall"]["dice"]
        return out

    # ------------------------------------------------------------------ evaluation
    def _predict(self, ctx: Ctx, net: LDNet | SegmentationNet, images: Tensor) -> dict[str, Tensor]:
        """``net``'s float maps of uint8 images (LD: embeddings, assignments; else probs), every rank's gathered."""

        def forward(batch: list[Tensor]) -> dict[str, Tensor]:
            out = net(batch[0])
            maps = out._asdict() if isinstance(out, LDOutput) else {"probs": out[:, 0]}
            return {key: value.float() for key, value in maps.items()}

        return ctx.predict(forward, TensorDataset(normalised(images)), batch_size=16, modules=[net])

    def evaluate(self, ctx: Ctx, data: LDData, state: LDState) -> dict[str, Any]:
        """Test Dice per task and phase, landmark errors, the shape-guided cluster's Dice; plots."""
        test, names = data.test, list(data.test.quality_names)
        segmentation: dict[str, dict[str, Any]] = {}
        predictions: dict[tuple[str, str], Tensor] = {}
        for task, nets in state.segmentation.items():
            for phase, net in nets.items():
                probs = predictions[task, phase] = self._predict(ctx, net, test.images)["probs"]
                segmentation.setdefault(task, {})[phase] = stratified_segmentation_metrics(
                    binarize(probs), test.masks[task], test.quality, names
                )
        maps = self._predict(ctx, state.net, test.images)
        results: dict[str, Any] = {"test": {"segmentation": segmentation}}
        landmarks, located = self._landmarks(ctx, state.net, data, maps["embeddings"])
        if landmarks:
            results["test"]["landmarks"] = landmarks
        if state.shape is not None:
            cluster0 = self._predict(ctx, state.shape, test.images)["assignments"].argmax(dim=1) == 0
            results["test"]["shape_guided"] = stratified_segmentation_metrics(
                cluster0, test.masks["vessels"], test.quality, names
            )
        results["data"] = {
            "pretrain_images": int(data.pretrain.shape[0]),
            "labelled": len(data.train),
            "val": len(data.val),
            "test": len(test),
            "test_quality": torch.bincount(test.quality, minlength=len(names)).tolist(),
            "tasks": list(data.tasks),
        }
        results["method"] = ctx.config.pretrain.method
        if ctx.run.writable:
            self._plots(ctx, data, maps, predictions, segmentation, located)
        return results

    def _landmarks(self, ctx: Ctx, net: LDNet, data: LDData, embeddings: Tensor) -> tuple[dict[str, Any], Located]:
        """One-shot landmark localisation (qualcl's design) from the first labelled image: metrics, predictions."""
        if not data.test.landmarks or not data.train.landmarks:
            return {}, {}
        e, test = ctx.config.eval, data.test
        reference = self._predict(ctx, net, data.train.images[:1])["embeddings"]
        metrics: dict[str, Any] = {}
        located: Located = {}
        for name in (n for n in LANDMARKS if n in test.landmarks):
            template = landmark_template(reference, data.train.landmarks[name][:1], sigma=e.landmark_sigma)[0]
            pred = located[name] = localise_landmarks(template, embeddings, sigma=e.landmark_sigma)

            def measure(keep: Tensor, p: Tensor = pred.points, t: Tensor = test.landmarks[name]) -> dict[str, float]:
                return landmark_metrics(p[keep], t[keep], radii=e.radii)

            metrics[name] = stratify(measure, test.quality, list(test.quality_names))
        return metrics, located

    def _plots(
        self,
        ctx: Ctx,
        data: LDData,
        maps: dict[str, Tensor],
        predictions: dict[tuple[str, str], Tensor],
        segmentation: dict[str, dict[str, Any]],
        located: Located,
    ) -> None:
        """The image grids (an image row above a map row, for a few test images) and the Dice bars."""
        test = data.test
        shown = _spread(test.quality, ctx.config.eval.shown)
        rgb, a, e = test.images[shown].float() / 255, maps["assignments"][shown], maps["embeddings"][shown]
        grids = {  # {plot: (image row, map row, the map row's label, title)}
            "cluster_assignments": (
                rgb,
                cluster_rgb(a),
                f"{a.shape[1]} clusters",
                "Cluster assignments (argmax) of the LD network",
            ),
            "embedding_pca": (
                rgb,
                pca_rgb(e),
                "embedding PCA",
                "Pixel embeddings, first three principal components as RGB",
            ),
        }
        for (task, phase), probs in predictions.items():
            overlay = overlay_rgb(rgb, probs[shown], test.masks[task][shown])
            title = f"{task}, encoder {phase}: prediction (red) vs truth (green), overlap yellow"
            grids[f"segmentation_{task}_{phase}"] = (rgb, overlay, "prediction / truth", title)
        for name, pred in located.items():
            marks = functools.partial(mark_landmarks, predicted=pred.points[shown], truth=test.landmarks[name][shown])
            title = f"One-shot {name} localisation: similarity to the template, prediction (x) vs truth (o)"
            heat = marks(heat_rgb(pred.similarity[shown]))
            grids[f"landmarks_{name}"] = (marks(rgb), heat, "cosine similarity", title)
        captions = [f"{test.names[i]} · {test.quality_names[int(test.quality[i])]}" for i in shown]
        for plot, (top, bottom, label, title) in grids.items():
            rows, path = torch.stack([top, bottom]), ctx.run.path("plots", f"{plot}.png")
            plot_image_grid(rows, path, title=title, column_titles=captions, row_titles=["", label])
        bars = {
            f"{task} ({phase})": {s: v["dice"] for s, v in strata.items() if s != "overall" and v["dice"] == v["dice"]}
            for (task, phase), strata in _parts({"segmentation": segmentation}).items()
        }
        if bars:
            path = ctx.run.path("plots", "dice_by_quality.png")
            plot_grouped_bars(bars, path, title="Test Dice by quality level", xlabel="quality level", ylabel="Dice")

    # ------------------------------------------------------------------ ablation
    def ablation_columns(self, config: LocalDiscriminationConfig) -> dict[str, str]:
        """Test Dice per task and phase, then (synthetic data) a gap between quality levels and the landmarks' MRE.

        The first task's last phase comes first (it is shown per quality level); the gap is that Dice
        on the best quality level minus on the worst.
        """
        tasks, phases = self._tasks(config), self._phases(config)
        first = (tasks[0], phases[-1])
        pairs = [first, *((t, ph) for t in tasks for ph in phases if (t, ph) != first)]
        columns = {f"{t}/{ph}": f"{t} Dice ({ph})" for t, ph in pairs}
        if config.data.dataset == "synthetic":
            columns["gap"] = f"{tasks[0]} gap {FUNDUS_QUALITY[0]} − {FUNDUS_QUALITY[-1]}"
            columns.update({f"{name}_mre": f"{name} MRE px" for name in LANDMARKS})
        return columns

    def ablation_cells(self, config: LocalDiscriminationConfig, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
        """``{stratum: {"<task>/<phase>": Dice, "<landmark>_mre": MRE}}``; overall also the first Dice's gap."""
        test = metrics["test"]
        cells: dict[str, dict[str, float]] = {}
        for (task, phase), strata in _parts(test).items():
            for stratum, values in strata.items():
                cells.setdefault(stratum, {})[f"{task}/{phase}"] = values["dice"]
        for name, strata in test.get("landmarks", {}).items():
            for stratum, values in strata.items():
                cells.setdefault(stratum, {})[f"{name}_mre"] = values["mre"]
        first = next(iter(self.ablation_columns(config)))
        levels = [cells[s].get(first, math.nan) for s in cells if s != "overall"]
        if len(levels) > 1:  # best minus worst quality level (NaN, skipped in the means, when one is empty)
            cells["overall"]["gap"] = levels[0] - levels[-1]
        return cells

    def ablation_notes(self, config: LocalDiscriminationConfig) -> str:
        """The protocol of the runs."""
        d, p, t = config.data, config.pretrain, config.transfer
        return (
            f"Encoder `{config.model.encoder}`: pre-training {p.stage1_epochs} (+ {p.stage2_epochs} for LD) epochs of "
            f"{count(p.steps_per_epoch, 'step')} on the training split without labels; transfer on {d.labelled} "
            f"labelled images, {count(t.frozen_epochs, 'epoch')} frozen then {t.finetune_epochs} fine-tuned. "
            "Landmarks: one-shot, qualcl's design (lower is better)."
        )

    def ablation_plots(
        self, config: LocalDiscriminationConfig, results: dict[str, dict[str, dict[str, list[float]]]], root: Path
    ) -> None:
        """``ablation_dice.png``: each task's test Dice per seed (the last transfer phase)."""
        phase, tasks = self._phases(config)[-1], self._tasks(config)
        dots = {
            SPEC.ablations[name].label: {t: strata["overall"].get(f"{t}/{phase}", []) for t in tasks}
            for name, strata in results.items()
            if name in SPEC.ablations and "overall" in strata
        }
        title = f"Test Dice per seed ({phase} encoder), per task"
        plot_variant_dots(dots, root / "ablation_dice.png", title=title, ylabel="Dice")

    def model_card(self, ctx: Ctx, data: LDData, state: LDState, results: dict[str, Any]) -> ModelCard:
        """Dice per task and quality (frozen / fine-tuned), landmark errors, the shape-guided Dice."""
        c, test, counts = ctx.config, results["test"], results["data"]
        p, t = c.pretrain, c.transfer
        parts = {f"{task} ({phase})": strata for (task, phase), strata in _parts(test).items()}
        if "shape_guided" in test:
            parts["vessels (shape-guided cluster 0)"] = test["shape_guided"]
        settings = {part: {s: {**v, "n": v["images"]} for s, v in strata.items()} for part, strata in parts.items()}
        table = strata_table(settings, {"dice": "Dice", "dice_std": "± std"})
        sdr = {f"sdr@{r:g}": f"SDR@{r:g}px" for r in c.eval.radii}
        for name, rows in test.get("landmarks", {}).items():
            table += "\n\n" + strata_table({f"{name} (one-shot, qualcl's design)": rows}, {"mre": "MRE px", **sdr})
        summary = (
            f"Preset `{c.preset}`, seed {c.seed}, dataset `{c.data.dataset}` at {c.data.image_size} px. Pre-training "
            f"`{p.method}` on {counts['pretrain_images']} unlabelled images ({p.stage1_epochs} + {p.stage2_epochs} "
            f"epochs of {count(p.steps_per_epoch, 'step')}, batch {p.batch_size} × 5 images, {p.grid}×{p.grid} patch "
            f"grid). Transfer: {counts['labelled']} labelled images ({counts['val']} for validation), "
            f"{count(t.frozen_epochs, 'epoch')} frozen then {t.finetune_epochs} fine-tuned; {counts['test']} test "
            "images. Landmark localisation is qualcl's design (the paper's method is not public)."
        )
        plots = [
            "dice_by_quality.png",
            *[f"segmentation_{task}_{phase}.png" for task, phase in _parts(test)],
            "cluster_assignments.png",
            "embedding_pca.png",
            *[f"landmarks_{name}.png" for name in test.get("landmarks", {})],
            *[f"{stage.name}.png" for stage in self.stages(c)],
        ]
        title = f"Local discrimination ({c.model.encoder}) on {c.data.dataset}"
        return ModelCard(title, PAPER, summary, self.headline(results), table, list(dict.fromkeys(plots)))


def _parts(test: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(task, phase): {stratum: segmentation metrics}}`` of the test metrics."""
    return {(task, phase): strata for task, phases in test["segmentation"].items() for phase, strata in phases.items()}


def _spread(quality: Tensor, count: int) -> list[int]:
    """``count`` test rows spread over the quality levels (worst last)."""
    levels = sorted(set(quality.tolist()))
    per = max(1, count // max(len(levels), 1))
    chosen = [i for level in levels for i in (quality == level).nonzero().flatten()[:per].tolist()]
    rest = [i for i in range(len(quality)) if i not in chosen]
    return (chosen + rest)[:count]


#: The local-discrimination recipe.
LOCAL_DISCRIMINATION = LocalDiscriminationRecipe()

#: ``LOCAL_DISCRIMINATION.run(config, out, *, callbacks=(), overwrite=False)``: the run end to end; re-running resumes.
run_local_discrimination = LOCAL_DISCRIMINATION.run

#: ``run_ablation(config, out, *, seeds=(0, 1, 2), variants=None, progress=True, run_missing=True)``: the
#: baselines of ``SPEC.ablations`` over seeds (:func:`qualcl.recipes.ablation.run_ablation`).
run_ablation = functools.partial(ablation.run_ablation, LOCAL_DISCRIMINATION)
