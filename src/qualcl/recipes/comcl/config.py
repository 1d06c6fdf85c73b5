"""CoMCL and lesion-detector configuration: dataclasses, presets, dataset settings, the ablation's variants, specs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qualcl.recipes.config import DataConfig as BaseDataConfig
from qualcl.recipes.config import RecipeConfig, RecipeSpec, TrainerConfig, Variant, check_cnn_encoder

__all__ = [
    "ABLATIONS",
    "DETECTOR_PRESETS",
    "DETECTOR_SPEC",
    "PRESETS",
    "SPEC",
    "ComclConfig",
    "DataConfig",
    "DetectorConfig",
    "DetectorSpec",
    "FinetuneConfig",
    "PretrainConfig",
    "dataset_settings",
    "headline_metric",
]


@dataclass
class DataConfig(BaseDataConfig):
    """Where the images come from (the six shared fields: :class:`qualcl.recipes.config.DataConfig`).

    Attributes:
        dataset: ``"synthetic"`` (generated and cached in the run folder), ``"eyeq"`` or ``"nih-cxr14"``.
        lq_ratio: Low-quality fraction of the synthetic set (EyeQ train: 0.336), or of the simulated
            quality of NIH ChestX-ray14 when it has no ``quality.csv`` (paper: 0.432).
        boxes: ``"ground_truth"`` (synthetic lesion boxes; NIH's ``BBox_List_2017.csv``) or a path to
            detector weights (EyeQ).
        detector_min_score: Confidence threshold for detector boxes.
        max_images: Real datasets: a seeded subset of at most this many images per split (``None``: all).
    """

    dataset: Literal["synthetic", "eyeq", "nih-cxr14"] = "synthetic"
    boxes: str = "ground_truth"
    detector_min_score: float = 0.8
    max_images: int | None = None


@dataclass
class PretrainConfig:
    """Contrastive pre-training on patches.

    Attributes:
        method: ``"comcl"`` (multi-level InfoNCE), ``"simclr"`` (basic CL: NT-Xent on patches),
            or ``"none"`` (no pre-training: the baseline).
        pairs: Level pairs of the multi-level loss: CoMCL's four levels
            (:data:`qualcl.data.levels.LEVEL_NAMES`) or, for "w/o multi-level", lesion vs healthy
            (:data:`qualcl.recipes.comcl.data.BINARY_LEVELS`); checked by ``ComclRecipe.check``.
        miner: ``"self_paced"`` or ``"none"`` (CoMCL w/o SPL).
        spl_threshold: ``"quantile"``, ``"literal"``, ``"scaled"`` or ``"off"``.
        patch_size: Patch side in pixels (paper: 128 on 512-px images, a quarter of the side).
        augmentation: ``"paper"`` (CoMCL's strong augmentation) or ``"light"`` (for small patches; see
            :func:`qualcl.recipes.comcl.data.patch_augmentation`).
        per_level: Patches per level in a batch (paper: 100).
        steps: Optimisation steps ``T_max``.
        temperature: ``tau``.
        lr: AdamW learning rate (paper: Adam, 1e-3).
        weight_decay: ``r(w)``.
        projection_dim: Output of the projection head (paper: 128).
        negatives_from: ``"view2"`` or ``"both"``.
    """

    method: Literal["comcl", "simclr", "none"] = "comcl"
    pairs: tuple[tuple[str, str], ...] = (("L", "LQ_L"), ("L", "H"), ("LQ_L", "LQ_H"))
    miner: Literal["self_paced", "none"] = "self_paced"
    spl_threshold: Literal["quantile", "literal", "scaled", "off"] = "quantile"
    patch_size: int = 24
    augmentation: Literal["paper", "light"] = "light"
    per_level: int = 16
    steps: int = 250
    temperature: float = 0.07
    lr: float = 1e-3
    weight_decay: float = 5e-4
    projection_dim: int = 128
    negatives_from: Literal["view2", "both"] = "view2"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.per_level < 1:
            raise ValueError(f"pretrain.steps and pretrain.per_level must be >= 1, got {self.steps}, {self.per_level}")


@dataclass
class FinetuneConfig:
    """Supervised DR grading on whole images.

    Attributes:
        epochs: Training epochs.
        batch_size: Images per batch.
        lr: AdamW learning rate.
        weight_decay: Weight decay.
        val_fraction: Fraction of training patients held out for model selection (by QWK).
    """

    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    val_fraction: float = 0.15


@dataclass
class ComclConfig(RecipeConfig):
    """The whole CoMCL run (``preset`` and ``seed`` come from :class:`RecipeConfig`).

    Attributes:
        trainer: :class:`~qualcl.recipes.config.TrainerConfig`; CoMCL's 32-px patches end in 1 × 1
            maps, so tiny-map convolutions run as unfold + matmul on CPUs (``small_map_convs``), and
            the encoder trains in channels-last format (both measured faster on 2 CPU cores:
            ``benchmarks/step_overhead.py``).
        backbone: Encoder name for :func:`qualcl.models.build_encoder` (paper: resnet50).
        pretrained: Optional local weights file for the encoder (nothing is downloaded).
        num_classes: DR grades (5), or chest classes (9: No Finding + the ChestX-ray8 findings).
        lq_ratios: Test-time low-quality ratios to evaluate, besides the original (paper: 0.7, 1.0).
        probe: Also diagnose the frozen pre-trained encoder (linear probes of the class and of low vs
            high quality, feature geometry by level: :mod:`qualcl.recipes.comcl.probe`) into
            ``metrics.json``'s ``probe``; the ablation turns it on.
        data: :class:`DataConfig`.
        pretrain: :class:`PretrainConfig`.
        finetune: :class:`FinetuneConfig`.
    """

    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(channels_last=True, small_map_convs="unfold"))
    backbone: str = "resnet10"
    pretrained: str | None = None
    num_classes: int = 5
    lq_ratios: tuple[float, ...] = (0.7, 1.0)
    probe: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        check_cnn_encoder(self.backbone, "backbone")


#: ``{preset: overrides of the ComclConfig defaults}`` (the defaults are the ``default`` preset).
PRESETS: dict[str, dict[str, Any]] = {
    # seconds: for tests and CI
    "smoke": {
        "trainer": {"progress": False},
        "data": {"num_images": 48, "image_size": 64},
        "pretrain": {"patch_size": 24, "per_level": 4, "steps": 4, "projection_dim": 32},
        "finetune": {"epochs": 1, "batch_size": 16},
    },
    # minutes on 2 CPU cores: the README's main job
    "default": {},
    # the paper's hyper-parameters, for a GPU and the real data
    "paper": {
        "backbone": "resnet50",
        "data": {"dataset": "eyeq", "image_size": 512, "boxes": "detector.safetensors"},
        "pretrain": {
            "patch_size": 128,
            "augmentation": "paper",
            "per_level": 100,
            "steps": 800 * 30,
            "projection_dim": 128,
        },
        "finetune": {"epochs": 25, "batch_size": 16, "lr": 1e-3},
    },
}


def dataset_settings(dataset: str, preset: str) -> dict[str, Any]:
    """What a dataset implies: NIH ChestX-ray14 brings 9 classes, 43.2 % LQ and its own boxes."""
    if dataset == "nih-cxr14":
        return {"num_classes": 9, "data": {"lq_ratio": 0.432, "boxes": "ground_truth"}}
    return {}


#: The ablation (CoMCL Tables 2 and 3): variant → the paper's label and its overrides. Every variant
#: also probes its frozen pre-trained encoder (``probe=true``), which tells a better pre-training from
#: a lucky fine-tuning.
ABLATIONS: dict[str, Variant] = {
    name: Variant(label, (*overrides, "probe=true"))
    for name, (label, overrides) in {
        "baseline": ("Baseline (no pre-training)", ("pretrain.method=none",)),
        "basic_cl": ("Basic CL (SimCLR NT-Xent on patches)", ("pretrain.method=simclr",)),
        "wo_multi_level": ("CoMCL w/o multi-level (lesion vs healthy)", ("pretrain.pairs=[[lesion, healthy]]",)),
        "wo_spl": ("CoMCL w/o SPL (no hard-negative mining)", ("pretrain.miner=none",)),
        "comcl": ("CoMCL (full) = v3 {L, LQ_L, H, LQ_H}", ()),
        "v1_L_LQL": ("CoMCL v1 {L, LQ_L}", ("pretrain.pairs=[[L, LQ_L]]",)),
        "v2_L_LQL_H": ("CoMCL v2 {L, LQ_L, H}", ("pretrain.pairs=[[L, LQ_L], [L, H]]",)),
        # not in the paper: its printed threshold lambda_t = 1 / K_t instead of qualcl's quantile default
        "spl_literal": ("CoMCL with the printed SPL threshold 1/K_t", ("pretrain.spl_threshold=literal",)),
    }.items()
}


def headline_metric(config: ComclConfig) -> str:
    """The kappa a run reports and selects by: ``"qwk"`` for ordered DR grades, ``"kappa"`` for chest classes."""
    return "kappa" if config.data.dataset == "nih-cxr14" else "qwk"


#: What ``qualcl run comcl`` needs before it trains (its options, their help and the config); the
#: recipe object (``recipe.py``, which imports torch) carries the same attributes.
SPEC: RecipeSpec[ComclConfig] = RecipeSpec(
    name="comcl",
    config_class=ComclConfig,
    presets=PRESETS,
    data_help="dataset folder (real data, or an existing synthetic set)",
    set_example="pretrain.steps=100",
    dataset_settings=dataset_settings,
    ablations=ABLATIONS,
)


@dataclass
class DetectorConfig(RecipeConfig):
    """Lesion-detector training (``preset``, ``seed`` and ``trainer`` come from :class:`RecipeConfig`).

    Attributes:
        dataset: ``"synthetic"`` (masks of the generated set) or ``"idrid"`` (IDRiD segmentation layout).
        data_dir: Dataset folder (synthetic: generated there if missing).
        num_images: Synthetic images to generate.
        lq_ratio: Synthetic low-quality fraction (as CoMCL's ``data.lq_ratio``, so both can share a folder).
        image_size: Side of the images the detector sees.
        architecture: ``"mobilenet_v3"`` or ``"resnet50"``.
        steps: SGD steps.
        batch_size: Images per step (per process under DDP).
        lr: Learning rate.
        test_fraction: Share of images held out for the recall / precision check.
    """

    dataset: Literal["synthetic", "idrid"] = "synthetic"
    data_dir: str | None = None
    num_images: int = 300
    lq_ratio: float = 0.336
    image_size: int = 128
    architecture: Literal["mobilenet_v3", "resnet50"] = "mobilenet_v3"
    steps: int = 300
    batch_size: int = 4
    lr: float = 0.01
    test_fraction: float = 0.2


#: ``{preset: overrides of the DetectorConfig defaults}`` of ``qualcl run comcl-detector``.
DETECTOR_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"trainer": {"progress": False}, "num_images": 12, "image_size": 64, "steps": 2, "batch_size": 2},
    "default": {},
    "paper": {"dataset": "idrid", "image_size": 1024, "architecture": "resnet50", "steps": 20000},
}


class DetectorSpec(RecipeSpec[DetectorConfig]):
    """The detector's spec: its fields, ``dataset`` and ``data_dir`` too, are top-level."""

    def config(
        self,
        preset: str = "default",
        *,
        dataset: str | None = None,
        data_dir: str | None = None,
        overrides: Sequence[str] = (),
        seed: int | None = None,
    ) -> DetectorConfig:
        """Defaults ← preset ← ``--dataset`` / ``--data`` ← ``--set`` (as ``DetectorRecipe.config``)."""
        extra = list(overrides)
        if dataset is not None:
            extra.insert(0, f"dataset={dataset}")
        if data_dir is not None:
            extra.insert(0, f"data_dir={data_dir}")
        return super().config(preset, overrides=extra, seed=seed)


#: What ``qualcl run comcl-detector`` needs before it trains; the recipe object
#: (``detector_run.py``, which imports torch) carries the same attributes.
DETECTOR_SPEC = DetectorSpec(
    name="comcl-detector",
    config_class=DetectorConfig,
    presets=DETECTOR_PRESETS,
    datasets=("synthetic", "idrid"),
    data_help="dataset folder (synthetic: generated there if missing; idrid: the IDRiD segmentation layout)",
    set_example="steps=100",
)
