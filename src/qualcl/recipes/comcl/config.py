"""CoMCL and lesion-detector configuration: dataclasses, presets, dataset settings, the ablation's variants, specs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from qualcl.recipes.config import Claim, RecipeConfig, RecipeSpec, TrainerConfig, Variant, bounded, check_cnn_encoder
from qualcl.recipes.config import DataConfig as BaseDataConfig

__all__ = [
    "ABLATIONS",
    "DETECTOR_PRESETS",
    "DETECTOR_SPEC",
    "PRESETS",
    "SPEC",
    "ComclConfig",
    "DataConfig",
    "DetectorConfig",
    "DetectorData",
    "FinetuneConfig",
    "PretrainConfig",
    "dataset_settings",
    "headline_metric",
]


@dataclass
class DataConfig(BaseDataConfig):
    """The shared fields (:class:`qualcl.recipes.config.DataConfig`), CoMCL's datasets, where boxes come from.

    ``lq_ratio`` is also the simulated low-quality share of NIH ChestX-ray14 without ``quality.csv``
    (paper: 0.432). ``boxes``: ``"ground_truth"`` (the synthetic set's; NIH's ``BBox_List_2017.csv``) or
    detector weights (EyeQ: ``qualcl run comcl-detector``), whose boxes count above ``detector_min_score``.
    """

    dataset: Literal["synthetic", "eyeq", "nih-cxr14"] = "synthetic"
    boxes: str = "ground_truth"
    detector_min_score: float = 0.8
    max_images: int | None = None  # real datasets: a seeded subset of at most this many images per split


@dataclass
class PretrainConfig:
    """Contrastive pre-training on level-balanced patch pairs (the paper's values in the comments)."""

    method: Literal["comcl", "simclr", "none"] = "comcl"  # simclr: basic CL (NT-Xent on patches); none: the baseline
    # CoMCL's four levels (qualcl.data.levels.LEVEL_NAMES) or, "w/o multi-level", lesion vs healthy
    # (qualcl.recipes.comcl.data.BINARY_LEVELS); checked by ComclRecipe.check
    pairs: tuple[tuple[str, str], ...] = (("L", "LQ_L"), ("L", "H"), ("LQ_L", "LQ_H"))
    miner: Literal["self_paced", "none"] = "self_paced"  # none: CoMCL w/o SPL
    spl_threshold: Literal["quantile", "literal", "scaled", "off"] = "quantile"
    patch_size: int = 24  # 128 on 512-px images: a quarter of the side
    augmentation: Literal["paper", "light"] = "light"  # light: for small patches (data.PatchAugmentation)
    per_level: int = 16  # patches per level in a batch: 100
    steps: int = bounded(250, ">= 1")  # T_max
    temperature: float = 0.07  # tau
    lr: float = 1e-3  # AdamW (Adam, 1e-3)
    weight_decay: float = 5e-4  # r(w)
    projection_dim: int = 128
    negatives_from: Literal["view2", "both"] = "view2"


@dataclass
class FinetuneConfig:
    """Supervised grading of whole images (AdamW); ``val_fraction`` of the patients select the model by kappa."""

    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    val_fraction: float = 0.15


@dataclass
class ComclConfig(RecipeConfig):
    """The whole run: data, pretrain, finetune sections; preset, seed and trainer come from RecipeConfig."""

    # 24-px patches end in 1 x 1 maps: unfold + matmul convolutions and channels-last are faster on CPUs
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(channels_last=True, small_map_convs="unfold"))
    backbone: str = "resnet10"  # a CNN encoder (paper: resnet50), from the local weights file `pretrained` if given
    pretrained: str | None = None
    num_classes: int = 5  # DR grades, or the 9 chest classes (No Finding + the ChestX-ray8 findings)
    lq_ratios: tuple[float, ...] = (0.7, 1.0)  # test sets with the low-quality share raised to these (as the paper)
    probe: bool = False  # diagnose the frozen pre-trained encoder into metrics.json (comcl.probe); the ablation does
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        check_cnn_encoder(self.backbone, "backbone")


#: ``{preset: overrides of the ComclConfig defaults}``: ``smoke`` for tests and CI (seconds), ``default``
#: the README's main job (minutes on 2 CPU cores), ``paper`` the paper's hyper-parameters (a GPU, real data).
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "trainer": {"progress": False},
        "backbone": "resnet10_tiny",
        "data": {"num_images": 48, "image_size": 64},
        "pretrain": {"patch_size": 24, "per_level": 4, "steps": 4, "projection_dim": 32},
        "finetune": {"epochs": 1, "batch_size": 16},
    },
    "default": {},
    "paper": {
        "backbone": "resnet50",
        "data": {"dataset": "eyeq", "image_size": 512, "boxes": "detector.safetensors"},
        "pretrain": {"patch_size": 128, "augmentation": "paper", "per_level": 100, "steps": 800 * 30},
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


SPEC = RecipeSpec(
    "comcl",
    ComclConfig,
    PRESETS,
    data_help="dataset folder (real data, or an existing synthetic set)",
    set_example="pretrain.steps=100",
    dataset_settings=dataset_settings,
    ablations=ABLATIONS,
    claims=(  # the paper's Table 2: full CoMCL above basic CL and no pre-training, most on low-quality images
        Claim("CoMCL pre-training grades better than basic CL", "comcl", "basic_cl", "original/metric"),
        Claim("CoMCL pre-training grades better than none", "comcl", "baseline", "original/metric"),
        Claim("CoMCL beats basic CL on the 100 % low-quality test set", "comcl", "basic_cl", "lq_100/metric"),
    ),
)


@dataclass
class DetectorData(BaseDataConfig):
    """The shared fields; ``"idrid"`` reads IDRiD's segmentation layout (the synthetic set: its lesion masks)."""

    dataset: Literal["synthetic", "idrid"] = "synthetic"
    num_images: int = 300
    image_size: int = 128


@dataclass
class DetectorConfig(RecipeConfig):
    """The whole detector run: data section, Faster R-CNN ``architecture`` (``"resnet50"``: the paper's R50-FPN).

    SGD ``steps``, ``batch_size`` and ``lr``; ``test_fraction`` of the images are held out for recall / precision.
    """

    data: DetectorData = field(default_factory=DetectorData)
    architecture: Literal["mobilenet_v3", "resnet50"] = "mobilenet_v3"
    box_head_width: int = bounded(1024, ">= 1")  # torchvision's; the smoke preset narrows it (small run folders)
    steps: int = 300
    batch_size: int = 4
    lr: float = 0.01
    test_fraction: float = 0.2


#: ``{preset: overrides of the DetectorConfig defaults}`` of ``qualcl run comcl-detector``.
DETECTOR_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "trainer": {"progress": False},
        "data": {"num_images": 12, "image_size": 64},
        "box_head_width": 32,
        "steps": 2,
        "batch_size": 2,
    },
    "default": {},
    "paper": {"data": {"dataset": "idrid", "image_size": 1024}, "architecture": "resnet50", "steps": 20000},
}
DETECTOR_SPEC = RecipeSpec(
    "comcl-detector",
    DetectorConfig,
    DETECTOR_PRESETS,
    data_help="dataset folder (synthetic: generated there if missing; idrid: the IDRiD segmentation layout)",
    set_example="steps=100",
)
