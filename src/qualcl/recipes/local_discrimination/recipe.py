"""The local-discrimination recipe on the shared driver: LD pre-training → shape-guided LD → segmentation transfer.

Evaluation: per-image Dice of each task (frozen and fine-tuned encoder) overall and per quality
stratum, one-shot landmark localisation (qualcl's design), and the shape-guided cluster's Dice.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from qualcl.data.loading import FUNDUS_QUALITY
from qualcl.data.views import IMAGENET_MEAN, IMAGENET_STD, LocalDiscriminationViews
from qualcl.evaluation import landmark_template, localise_landmarks
from qualcl.functional import grid_items, patch_grid
from qualcl.metrics import binarize, landmark_metrics, stratified_segmentation_metrics, stratify
from qualcl.recipes import ablation
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader, train_loader
from qualcl.recipes.local_discrimination.config import SPEC, LocalDiscriminationConfig
from qualcl.recipes.local_discrimination.data import SYNTHETIC_TASKS, LDData, SegmentationDataset, load_ld_data
from qualcl.recipes.local_discrimination.model import LDNet, SegmentationNet
from qualcl.recipes.local_discrimination.modules import (
    LDPretraining,
    SegmentationTransfer,
    ShapeGuidedTraining,
    build_losses,
)
from qualcl.recipes.local_discrimination.plots import (
    plot_assignments,
    plot_embedding_pca,
    plot_landmarks,
    plot_segmentations,
)
from qualcl.recipes.modules import gathering
from qualcl.recipes.plots import plot_grouped_bars, plot_variant_dots
from qualcl.recipes.run_folder import ModelCard, strata_table

__all__ = ["LOCAL_DISCRIMINATION", "LDState", "LocalDiscriminationRecipe", "run_ablation", "run_local_discrimination"]

PAPER = (
    'Chen et al., "Unsupervised Local Discrimination for Medical Images", IEEE TPAMI 45(12), 2023 '
    "(arXiv 2108.09440; code HuaiChen-1994/LDLearning)"
)
LANDMARKS = ("disc", "fovea")


@dataclass
class LDState:
    """The run's networks.

    Attributes:
        net: The pre-trained (or randomly initialised) LD network.
        stage1: Its weights after stage 1 (the shape-guided stage starts from them).
        shape: The shape-guided network (``K = shape.clusters``), if trained.
        segmentation: ``{task: {"frozen" | "finetuned": SegmentationNet}}``.
    """

    net: LDNet
    stage1: dict[str, Tensor] | None = None
    shape: LDNet | None = None
    segmentation: dict[str, dict[str, SegmentationNet]] = field(default_factory=dict)


def _views(config: LocalDiscriminationConfig, images: Tensor, seed: int) -> LocalDiscriminationViews:
    p = config.pretrain
    length = p.steps_per_epoch * p.batch_size
    return LocalDiscriminationViews(
        images,
        size=config.data.image_size,
        length=length,
        seed=seed,
        crop_scale=(p.crop_scale, 1.0),
        rotation=p.rotation,
    )


class LocalDiscriminationRecipe(Recipe[LocalDiscriminationConfig, LDData, LDState]):
    """Unsupervised local discrimination, then segmentation transfer, landmarks and shape-guided segmentation.

    Stages: ``pretrain_pd`` (patch discrimination + mixup), ``pretrain_ld`` (+ region
    discrimination and entropy), ``shape`` (LD with an adversarial vessel-shape prior on cluster
    channel 0, from the stage-1 weights), then per task ``transfer_<task>_frozen`` and
    ``transfer_<task>_finetuned`` (soft Dice; the best frozen epoch is fine-tuned). Baselines swap the
    pre-training (``pretrain.method``: ``simclr``, ``dense``, ``ld_stage1``, ``none``).

    Reference:
        Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023.
    """

    spec = SPEC
    paper = PAPER

    def load_data(self, ctx: RunContext[LocalDiscriminationConfig]) -> LDData:
        """Generate (once) or read the images, masks and landmarks."""
        cfg = ctx.config.data
        return load_ld_data(cfg, ctx.dataset_root(cfg), ctx.config.transfer.tasks, progress=ctx.image_progress)

    def setup(self, ctx: RunContext[LocalDiscriminationConfig], data: LDData) -> LDState:
        """The LD network, randomly initialised."""
        m = ctx.config.model
        return LDState(LDNet(m.encoder, m.dim, m.clusters))

    def _shape_enabled(self, config: LocalDiscriminationConfig) -> bool:
        return (
            config.shape.enabled
            and config.data.dataset == "synthetic"
            and config.pretrain.method in ("ld", "ld_stage1")
        )

    def stages(self, config: LocalDiscriminationConfig) -> list[Stage]:
        """Pre-training stages of the method, the shape-guided stage, two transfer stages per task."""
        method = config.pretrain.method
        stages: list[Stage] = []
        if method in ("ld", "ld_stage1"):
            stages.append(Stage("pretrain_pd", lambda c, d, s: self.pretrain(c, d, s, "pd")))
            if method == "ld" and config.pretrain.stage2_epochs:
                stages.append(Stage("pretrain_ld", lambda c, d, s: self.pretrain(c, d, s, "ld")))
        elif method in ("simclr", "dense"):
            stages.append(Stage(f"pretrain_{method}", lambda c, d, s: self.pretrain(c, d, s, method)))
        if self._shape_enabled(config):
            stages.append(Stage("shape", self.shape_guided))
        for task in self._tasks(config):
            for phase in self._phases(config):
                run = functools.partial(self.transfer, task=task, phase=phase)
                stages.append(Stage(f"transfer_{task}_{phase}", run))
        return stages

    @staticmethod
    def _tasks(config: LocalDiscriminationConfig) -> tuple[str, ...]:
        """The transfer's tasks: ``transfer.tasks``, else every mask the dataset has."""
        from qualcl.data.readers import SEGMENTATION_DATASETS

        if config.transfer.tasks:
            return config.transfer.tasks
        return SYNTHETIC_TASKS if config.data.dataset == "synthetic" else SEGMENTATION_DATASETS[config.data.dataset]

    @staticmethod
    def _phases(config: LocalDiscriminationConfig) -> list[str]:
        """The transfer's phases: ``frozen``, then ``finetuned`` unless it has no epochs."""
        return ["frozen", "finetuned"] if config.transfer.finetune_epochs else ["frozen"]

    # ------------------------------------------------------------------ stages
    def _loader(self, config: LocalDiscriminationConfig, views: LocalDiscriminationViews) -> Callable[[], Any]:
        return train_loader(
            views, config.pretrain.batch_size, seed=config.seed, collate_fn=views.collate, name="pretrain.batch_size"
        )

    def pretrain(self, ctx: RunContext[LocalDiscriminationConfig], data: LDData, state: LDState, method: str) -> None:
        """One self-supervised stage on the unlabelled training images."""
        config = ctx.config
        p = config.pretrain
        stage = "pretrain_pd" if method == "pd" else f"pretrain_{method}"
        epochs = p.stage2_epochs if method == "ld" else p.stage1_epochs
        views = _views(config, data.pretrain, config.seed)
        module = LDPretraining(state.net, views, p, method, gather_distributed=gathering(config.trainer))
        weights: dict[str, nn.Module] = {"ld_stage1" if method == "pd" else f"ld_{method}": state.net}
        if module.projection is not None:
            weights["projection"] = module.projection
        net = state.net
        probe_images = self._normalised(data.pretrain[:16])

        def probe(_: L.LightningModule) -> tuple[Tensor, Tensor]:
            # the collapse monitor's probe: 8 x 8 patch features of 16 images, and of their mirror images
            x = probe_images.to(next(net.parameters()).device)
            items = grid_items(patch_grid(net(x).embeddings))
            return items, grid_items(patch_grid(net(x.flip(-1)).embeddings).flip(-1))

        ctx.fit(
            stage,
            module,
            self._loader(config, views),
            weights=weights,
            max_epochs=epochs,
            find_unused_parameters=True,  # stage 1 leaves the clustering branch unused, SimCLR the decoder
            sync_batchnorm=True,
            info={"epochs": epochs, "steps_per_epoch": p.steps_per_epoch},
            collapse=probe,
        )
        if method == "pd":
            state.stage1 = copy.deepcopy(state.net.state_dict())

    def shape_guided(self, ctx: RunContext[LocalDiscriminationConfig], data: LDData, state: LDState) -> None:
        """LD with the adversarial vessel-shape prior, from the stage-1 weights, ``K = shape.clusters``."""
        config = ctx.config
        m = config.model
        net = LDNet(m.encoder, m.dim, config.shape.clusters)
        if state.stage1 is not None:
            own = {k: v for k, v in state.stage1.items() if not k.startswith("clustering.")}
            net.load_state_dict(own, strict=False)  # the clustering branch (K differs) starts afresh, as the code's
        views = _views(config, data.pretrain, config.seed + 7)
        module = ShapeGuidedTraining(
            net, views, data.priors, config.pretrain, config.shape, gather_distributed=gathering(config.trainer)
        )
        ctx.fit(
            "shape",
            module,
            self._loader(config, views),
            weights={"shape_net": net, "shape_discriminator": module.discriminator},
            max_epochs=config.shape.epochs,
            find_unused_parameters=True,
            info={"epochs": config.shape.epochs},
        )
        state.shape = net

    def transfer(
        self, ctx: RunContext[LocalDiscriminationConfig], data: LDData, state: LDState, *, task: str, phase: str
    ) -> None:
        """Soft-Dice segmentation of ``task`` from the encoder: frozen, or fine-tuned from the best frozen epoch.

        The loss is one soft Dice over the batch's pixels, as the code's (``transfer.per_image_dice``:
        the mean of per-image Dice instead).
        """
        config = ctx.config
        t = config.transfer
        frozen = phase == "frozen"
        nets = state.segmentation.setdefault(task, {})
        if frozen:
            net = SegmentationNet(copy.deepcopy(state.net.encoder))
        else:
            net = copy.deepcopy(nets["frozen"])
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        train = SegmentationDataset(data.train, task, mean=mean, std=std, train=True, seed=config.seed)
        val = SegmentationDataset(data.val, task, mean=mean, std=std)
        net.train()  # the copy arrives in the mode its source was left in; the module sets the modes per epoch
        losses = build_losses(config.pretrain, gather=gathering(config.trainer), per_image_dice=t.per_image_dice)
        module = SegmentationTransfer(net, lr=t.lr, frozen=frozen, loss=losses["dice"])
        epochs = t.frozen_epochs if frozen else t.finetune_epochs
        ctx.fit(
            f"transfer_{task}_{phase}",
            module,
            train_loader(train, min(t.batch_size, len(train)), seed=config.seed, name="transfer.batch_size"),
            eval_loader(val, t.batch_size),
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
        out = {
            f"dice {task} ({phase})": strata["overall"]["dice"]
            for task, phases in test["segmentation"].items()
            for phase, strata in phases.items()
        }
        out.update({f"mre {name} px": rows["overall"]["mre"] for name, rows in test.get("landmarks", {}).items()})
        if "shape_guided" in test:
            out["dice vessels (shape-guided cluster 0)"] = test["shape_guided"]["overall"]["dice"]
        return out

    # ------------------------------------------------------------------ evaluation
    def _normalised(self, images: Tensor) -> Tensor:
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        return (images.float() / 255 - mean) / std

    def _maps(self, ctx: RunContext[LocalDiscriminationConfig], net: LDNet, images: Tensor) -> tuple[Tensor, Tensor]:
        """Embedding maps and assignments of uint8 images (predicted on every rank's share, gathered)."""
        dataset = torch.utils.data.TensorDataset(self._normalised(images))

        def forward(batch: Any) -> dict[str, Tensor]:
            out = net(batch[0])
            return {"embeddings": out.embeddings.float(), "assignments": out.assignments.float()}

        result = ctx.predict(forward, dataset, batch_size=16, modules=[net])
        return result["embeddings"], result["assignments"]

    def _segment(self, ctx: RunContext[LocalDiscriminationConfig], net: SegmentationNet, images: Tensor) -> Tensor:
        dataset = torch.utils.data.TensorDataset(self._normalised(images))
        result = ctx.predict(lambda b: {"probs": net(b[0]).float()}, dataset, batch_size=16, modules=[net])
        return result["probs"][:, 0]

    def evaluate(self, ctx: RunContext[LocalDiscriminationConfig], data: LDData, state: LDState) -> dict[str, Any]:
        """Test Dice per task and phase, landmark errors, the shape-guided cluster's Dice; plots."""
        config, test = ctx.config, data.test
        names = list(test.quality_names)
        segmentation: dict[str, dict[str, Any]] = {}
        predictions: dict[str, Tensor] = {}
        for task, nets in state.segmentation.items():
            for phase, net in nets.items():
                probs = self._segment(ctx, net, test.images)
                segmentation.setdefault(task, {})[phase] = stratified_segmentation_metrics(
                    binarize(probs), test.masks[task], test.quality, names
                )
                predictions[f"{task}/{phase}"] = probs
        embeddings, assignments = self._maps(ctx, state.net, test.images)
        results: dict[str, Any] = {"test": {"segmentation": segmentation}}
        landmarks, located = self._landmarks(ctx, state.net, data, embeddings)
        if landmarks:
            results["test"]["landmarks"] = landmarks
        if state.shape is not None:
            _, shape_assignments = self._maps(ctx, state.shape, test.images)
            cluster0 = shape_assignments.argmax(dim=1) == 0
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
        results["method"] = config.pretrain.method
        if ctx.run.writable:
            self._plots(ctx, data, state, embeddings, assignments, predictions, segmentation, located)
        return results

    def _landmarks(
        self, ctx: RunContext[LocalDiscriminationConfig], net: LDNet, data: LDData, embeddings: Tensor
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One-shot localisation of each landmark, the template from the first labelled image (qualcl's design).

        Returns the metrics ``{landmark: {stratum: ...}}`` and the predictions ``{landmark: LandmarkPrediction}``.
        """
        if not data.test.landmarks or not data.train.landmarks:
            return {}, {}
        e = ctx.config.eval
        reference, _ = self._maps(ctx, net, data.train.images[:1])
        metrics: dict[str, Any] = {}
        located: dict[str, Any] = {}
        names = list(data.test.quality_names)
        for name in LANDMARKS:
            if name not in data.test.landmarks:
                continue
            template = landmark_template(reference, data.train.landmarks[name][:1], sigma=e.landmark_sigma)[0]
            pred = localise_landmarks(template, embeddings, sigma=e.landmark_sigma)
            truth = data.test.landmarks[name]

            def measure(keep: Tensor, points: Tensor = pred.points, truth: Tensor = truth) -> dict[str, float]:
                return landmark_metrics(points[keep], truth[keep], radii=e.radii)

            metrics[name] = stratify(measure, data.test.quality, names)
            located[name] = pred
        return metrics, located

    # ------------------------------------------------------------------ plots
    def _plots(
        self,
        ctx: RunContext[LocalDiscriminationConfig],
        data: LDData,
        state: LDState,
        embeddings: Tensor,
        assignments: Tensor,
        predictions: dict[str, Tensor],
        segmentation: dict[str, dict[str, Any]],
        located: dict[str, Any],
    ) -> None:
        run, test = ctx.run, data.test
        shown = _spread(test.quality, ctx.config.eval.shown)
        captions = [f"{test.names[i]} · {test.quality_names[int(test.quality[i])]}" for i in shown]
        plot_assignments(
            test.images[shown],
            assignments[shown],
            captions,
            run.path("plots", "cluster_assignments.png"),
            title="Cluster assignments (argmax) of the LD network",
        )
        plot_embedding_pca(
            test.images[shown],
            embeddings[shown],
            captions,
            run.path("plots", "embedding_pca.png"),
            title="Pixel embeddings, first three principal components as RGB",
        )
        for key, probs in predictions.items():
            task, phase = key.split("/")
            plot_segmentations(
                test.images[shown],
                probs[shown],
                test.masks[task][shown],
                captions,
                run.path("plots", f"segmentation_{task}_{phase}.png"),
                title=f"{task}, encoder {phase}: prediction (red) vs truth (green), overlap yellow",
            )
        for name, pred in located.items():
            plot_landmarks(
                test.images[shown],
                pred.similarity[shown],
                pred.points[shown],
                test.landmarks[name][shown],
                captions,
                run.path("plots", f"landmarks_{name}.png"),
                title=f"One-shot {name} localisation: similarity to the template, prediction (x) vs truth (o)",
            )
        bars: dict[str, dict[str, float]] = {}
        for task, phases in segmentation.items():
            for phase, strata in phases.items():
                bars[f"{task} ({phase})"] = {
                    s: v["dice"] for s, v in strata.items() if s != "overall" and v["dice"] == v["dice"]
                }
        if bars:
            plot_grouped_bars(
                bars,
                run.path("plots", "dice_by_quality.png"),
                title="Test Dice by quality level",
                xlabel="quality level",
                ylabel="Dice",
            )

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
        for task, phases in test["segmentation"].items():
            for phase, strata in phases.items():
                for stratum, values in strata.items():
                    cells.setdefault(stratum, {})[f"{task}/{phase}"] = _number(values["dice"])
        for name, strata in test.get("landmarks", {}).items():
            for stratum, values in strata.items():
                cells.setdefault(stratum, {})[f"{name}_mre"] = _number(values["mre"])
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
            f"{p.steps_per_epoch} steps on the training split without labels; transfer on {d.labelled} labelled "
            f"images, {t.frozen_epochs} epochs frozen then {t.finetune_epochs} fine-tuned. Landmarks: one-shot, "
            "qualcl's design (lower is better)."
        )

    def ablation_plots(
        self, config: LocalDiscriminationConfig, results: dict[str, dict[str, dict[str, list[float]]]], root: Path
    ) -> None:
        """``ablation_dice.png``: each task's test Dice per seed (the last transfer phase)."""
        phase = self._phases(config)[-1]
        plot_variant_dots(
            {
                SPEC.ablations[name].label: {t: strata["overall"].get(f"{t}/{phase}", []) for t in self._tasks(config)}
                for name, strata in results.items()
                if name in SPEC.ablations and "overall" in strata
            },
            root / "ablation_dice.png",
            title=f"Test Dice per seed ({phase} encoder), per task",
            ylabel="Dice",
        )

    def model_card(
        self, ctx: RunContext[LocalDiscriminationConfig], data: LDData, state: LDState, results: dict[str, Any]
    ) -> ModelCard:
        """Dice per task and quality (frozen / fine-tuned), landmark errors, the shape-guided Dice."""
        config = ctx.config
        p, test = config.pretrain, results["test"]
        settings: dict[str, dict[str, dict[str, float]]] = {}
        for task, phases in test["segmentation"].items():
            for phase, strata in phases.items():
                settings[f"{task} ({phase})"] = {s: {**v, "n": v["images"]} for s, v in strata.items()}
        if "shape_guided" in test:
            settings["vessels (shape-guided cluster 0)"] = {
                s: {**v, "n": v["images"]} for s, v in test["shape_guided"].items()
            }
        table = strata_table(settings, {"dice": "Dice", "dice_std": "± std"})
        for name, rows in test.get("landmarks", {}).items():
            table += "\n\n" + strata_table(
                {f"{name} (one-shot, qualcl's design)": rows},
                {"mre": "MRE px", **{f"sdr@{r:g}": f"SDR@{r:g}px" for r in config.eval.radii}},
            )
        summary = (
            f"Preset `{config.preset}`, seed {config.seed}, dataset `{config.data.dataset}` at "
            f"{config.data.image_size} px. Pre-training `{p.method}` on {results['data']['pretrain_images']} "
            f"unlabelled images ({p.stage1_epochs} + {p.stage2_epochs} epochs of {p.steps_per_epoch} steps, "
            f"batch {p.batch_size} × 5 images, {p.grid}×{p.grid} patch grid). Transfer: "
            f"{results['data']['labelled']} labelled images ({results['data']['val']} for validation), "
            f"{config.transfer.frozen_epochs} epochs frozen then {config.transfer.finetune_epochs} fine-tuned; "
            f"{results['data']['test']} test images. Landmark localisation is qualcl's design (the paper's "
            "method is not public)."
        )
        plots = [
            "dice_by_quality.png",
            *[f"segmentation_{t}_{ph}.png" for t in test["segmentation"] for ph in test["segmentation"][t]],
            "cluster_assignments.png",
            "embedding_pca.png",
            *[f"landmarks_{n}.png" for n in test.get("landmarks", {})],
            *[f"{stage.name}.png" for stage in self.stages(config)],
        ]
        return ModelCard(
            title=f"Local discrimination ({config.model.encoder}) on {config.data.dataset}",
            paper=PAPER,
            summary=summary,
            headline=self.headline(results),
            table=table,
            plots=list(dict.fromkeys(plots)),
        )


def _number(value: Any) -> float:
    """A metric read back from ``metrics.json`` (``None`` for an empty stratum) as a float."""
    return math.nan if value is None else float(value)


def _spread(quality: Tensor, count: int) -> list[int]:
    """``count`` test rows spread over the quality levels (worst last)."""
    chosen: list[int] = []
    levels = sorted(set(quality.tolist()))
    per = max(1, count // max(len(levels), 1))
    for level in levels:
        chosen += (quality == level).nonzero().flatten()[:per].tolist()
    rest = [i for i in range(len(quality)) if i not in chosen]
    return (chosen + rest)[:count]


#: The local-discrimination recipe.
LOCAL_DISCRIMINATION = LocalDiscriminationRecipe()

#: ``LOCAL_DISCRIMINATION.run(config, out, *, callbacks=(), overwrite=False)``: the run end to end; re-running resumes.
run_local_discrimination = LOCAL_DISCRIMINATION.run

#: ``run_ablation(config, out, *, seeds=(0, 1, 2), variants=None, progress=True, run_missing=True)``: the
#: baselines of ``SPEC.ablations`` over seeds (:func:`qualcl.recipes.ablation.run_ablation`).
run_ablation = functools.partial(ablation.run_ablation, LOCAL_DISCRIMINATION)
