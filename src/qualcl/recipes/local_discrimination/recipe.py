"""The local-discrimination recipe on the shared driver: LD pre-training → shape-guided LD → segmentation transfer.

Evaluation: per-image Dice of each task (frozen and fine-tuned encoder) overall and per quality
stratum, one-shot landmark localisation (qualcl's design), and the shape-guided cluster's Dice.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from qualcl.data.views import IMAGENET_MEAN, IMAGENET_STD, LocalDiscriminationViews
from qualcl.evaluation import landmark_template, localise_landmarks
from qualcl.functional import grid_items, patch_grid
from qualcl.metrics import binarize, landmark_metrics, stratified_segmentation_metrics
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader
from qualcl.recipes.local_discrimination.config import PRESETS, LocalDiscriminationConfig
from qualcl.recipes.local_discrimination.data import SYNTHETIC_TASKS, LDData, SegmentationDataset, load_ld_data
from qualcl.recipes.local_discrimination.model import LDNet, SegmentationNet
from qualcl.recipes.local_discrimination.modules import LDPretraining, SegmentationTransfer, ShapeGuidedTraining
from qualcl.recipes.local_discrimination.plots import (
    plot_assignments,
    plot_embedding_pca,
    plot_landmarks,
    plot_segmentations,
)
from qualcl.recipes.modules import gathering
from qualcl.recipes.plots import plot_curves, plot_grouped_bars
from qualcl.recipes.run_folder import ModelCard, RunFolder, strata_table
from qualcl.samplers import ShardedShuffleSampler

__all__ = ["LOCAL_DISCRIMINATION", "LDState", "LocalDiscriminationRecipe", "run_local_discrimination"]

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

    name = "local-discrimination"
    paper = PAPER
    config_class = LocalDiscriminationConfig
    presets = PRESETS
    datasets = ("synthetic", "drive", "stare", "chase", "hrf", "idrid", "drishti")
    data_help = (
        "dataset folder: drive (training/, test/), stare (stare-images/, labels-ah/), chase (Image_NNx.jpg + "
        "_1stHO.png), hrf (images/, manual1/), idrid (A. Segmentation/), drishti (Training/, Test/)"
    )
    set_example = "pretrain.method=simclr"

    def check(self, config: LocalDiscriminationConfig) -> None:
        """Real datasets need their folder."""
        if config.data.dataset != "synthetic" and config.data.data_dir is None:
            raise ValueError(f"--data DIR is required with --dataset {config.data.dataset}")

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
            stages.append(Stage(f"transfer_{task}_frozen", self._transfer_stage(task, frozen=True)))
            if config.transfer.finetune_epochs:
                stages.append(Stage(f"transfer_{task}_finetuned", self._transfer_stage(task, frozen=False)))
        return stages

    @staticmethod
    def _tasks(config: LocalDiscriminationConfig) -> tuple[str, ...]:
        """The transfer's tasks: ``transfer.tasks``, else every mask the dataset has."""
        from qualcl.data.readers import SEGMENTATION_DATASETS

        if config.transfer.tasks:
            return config.transfer.tasks
        return SYNTHETIC_TASKS if config.data.dataset == "synthetic" else SEGMENTATION_DATASETS[config.data.dataset]

    # ------------------------------------------------------------------ stages
    def _transfer_stage(self, task: str, *, frozen: bool) -> Any:
        def run(ctx: RunContext[LocalDiscriminationConfig], data: LDData, state: LDState) -> None:
            self.transfer(ctx, data, state, task, frozen)

        return run

    def _loader(self, config: LocalDiscriminationConfig, views: LocalDiscriminationViews) -> Any:
        def build() -> DataLoader[Any]:
            sampler = ShardedShuffleSampler(len(views), seed=config.seed, drop_last=True)
            return DataLoader(
                views, batch_size=config.pretrain.batch_size, sampler=sampler, drop_last=True, collate_fn=views.collate
            )

        return build

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
            history="epoch_log",
            find_unused_parameters=True,  # stage 1 leaves the clustering branch unused, SimCLR the decoder
            sync_batchnorm=True,
            info={"epochs": epochs, "steps_per_epoch": p.steps_per_epoch},
            collapse=probe,
        )
        if method == "pd":
            state.stage1 = copy.deepcopy(state.net.state_dict())
        self._plot_history(ctx.run, stage, f"Pre-training ({method})")

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
            history="epoch_log",
            find_unused_parameters=True,
            info={"epochs": config.shape.epochs},
        )
        state.shape = net
        self._plot_history(ctx.run, "shape", "Shape-guided LD")

    def transfer(
        self, ctx: RunContext[LocalDiscriminationConfig], data: LDData, state: LDState, task: str, frozen: bool
    ) -> None:
        """Soft-Dice segmentation of ``task`` from the encoder: frozen, or fine-tuned from the best frozen epoch."""
        config = ctx.config
        t = config.transfer
        phase = "frozen" if frozen else "finetuned"
        nets = state.segmentation.setdefault(task, {})
        if frozen:
            net = SegmentationNet(copy.deepcopy(state.net.encoder))
        else:
            net = copy.deepcopy(nets["frozen"])
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        train = SegmentationDataset(data.train, task, mean=mean, std=std, train=True, seed=config.seed)
        val = SegmentationDataset(data.val, task, mean=mean, std=std)
        net.train()  # the copy arrives in the mode its source was left in; the module sets the modes per epoch
        module = SegmentationTransfer(net, lr=t.lr, frozen=frozen)
        epochs = t.frozen_epochs if frozen else t.finetune_epochs
        batch = min(t.batch_size, len(train))

        def loader() -> DataLoader[Any]:
            sampler = ShardedShuffleSampler(len(train), seed=config.seed, drop_last=True)
            return DataLoader(train, batch_size=batch, sampler=sampler, drop_last=True)

        stage = f"transfer_{task}_{phase}"
        ctx.fit(
            stage,
            module,
            loader,
            eval_loader(val, t.batch_size),
            weights={f"segmentation_{task}_{phase}": net},
            max_epochs=epochs,
            monitor="val/dice",
            history="epoch_log",
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
            rows = {"overall": {**landmark_metrics(pred.points, truth, radii=e.radii), "n": len(truth)}}
            for level, level_name in enumerate(names):
                keep = data.test.quality == level
                if bool(keep.any()):
                    rows[level_name] = {
                        **landmark_metrics(pred.points[keep], truth[keep], radii=e.radii),
                        "n": int(keep.sum()),
                    }
            metrics[name] = rows
            located[name] = pred
        return metrics, located

    # ------------------------------------------------------------------ plots
    def _plot_history(self, run: RunFolder, stage: str, title: str) -> None:
        rows = run.read_history(stage)
        if not rows or not run.writable:
            return
        epochs = [r["epoch"] for r in rows]
        keys = [k for k in rows[0] if k not in ("epoch", "lr", "loss", "discriminator")]
        series = {k: (epochs, [r[k] for r in rows]) for k in keys}
        secondary = {"total": (epochs, [r["loss"] for r in rows])} if "loss" in rows[0] else None
        plot_curves(
            series,
            run.path("plots", f"{stage}_curves.png"),
            title=title,
            xlabel="epoch",
            ylabel="loss term",
            secondary=secondary,
            secondary_label="total loss",
        )

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
        for task in state.segmentation:
            for phase in state.segmentation[task]:
                stage = f"transfer_{task}_{phase}"
                rows = run.read_history(stage)
                if rows:
                    epochs = [r["epoch"] for r in rows]
                    plot_curves(
                        {"train soft-Dice loss": (epochs, [r["train_loss"] for r in rows])},
                        run.path("plots", f"{stage}_curves.png"),
                        title=f"Transfer: {task}, encoder {phase}",
                        xlabel="epoch",
                        ylabel="loss",
                        secondary={"val Dice": (epochs, [r["val_dice"] for r in rows])},
                        secondary_label="Dice",
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
        headline = {
            f"Dice {task} ({phase})": strata["overall"]["dice"]
            for task, phases in test["segmentation"].items()
            for phase, strata in phases.items()
        }
        for name, rows in test.get("landmarks", {}).items():
            headline[f"MRE {name} px"] = rows["overall"]["mre"]
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
            *[f"{s}_curves.png" for s in ("pretrain_pd", "pretrain_ld", f"pretrain_{p.method}", "shape")],
        ]
        return ModelCard(
            title=f"Local discrimination ({config.model.encoder}) on {config.data.dataset}",
            paper=PAPER,
            summary=summary,
            headline=headline,
            table=table,
            plots=list(dict.fromkeys(plots)),
        )


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
