"""CoMCL recipe configuration: dataclasses, presets and ablation variants."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = [
    "ABLATIONS",
    "DATASET_DEFAULTS",
    "PRESETS",
    "ComclConfig",
    "DataConfig",
    "FinetuneConfig",
    "PretrainConfig",
    "comcl_config",
    "headline_metric",
]


@dataclass
class DataConfig:
    """Where the images come from.

    Attributes:
        dataset: ``"synthetic"`` (generated and cached in the run folder), ``"eyeq"`` or ``"nih-cxr14"``.
        data_dir: Folder of a real dataset (or of an already generated synthetic one).
        num_images: Synthetic images to generate.
        image_size: Side of the (square) images the networks see.
        lq_ratio: Low-quality fraction of the synthetic set (EyeQ train: 0.336), or of the simulated
            quality of NIH ChestX-ray14 when it has no ``quality.csv`` (paper: 0.432).
        seed: Data seed (fixed across ablation seeds: the data is the benchmark).
        boxes: ``"ground_truth"`` (synthetic lesion boxes; NIH's ``BBox_List_2017.csv``) or a path to
            detector weights (EyeQ).
        detector_min_score: Confidence threshold for detector boxes.
        max_images: Real datasets: a seeded subset of at most this many images per split (``None``: all).
    """

    dataset: str = "synthetic"
    data_dir: str | None = None
    num_images: int = 1200
    image_size: int = 96
    lq_ratio: float = 0.336
    seed: int = 0
    boxes: str = "ground_truth"
    detector_min_score: float = 0.8
    max_images: int | None = None


@dataclass
class PretrainConfig:
    """Contrastive pre-training on patches.

    Attributes:
        method: ``"comcl"`` (multi-level InfoNCE), ``"simclr"`` (basic CL: NT-Xent on patches),
            or ``"none"`` (no pre-training: the baseline).
        pairs: Level pairs of the multi-level loss.
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

    method: str = "comcl"
    pairs: tuple[tuple[str, str], ...] = (("L", "LQ_L"), ("L", "H"), ("LQ_L", "LQ_H"))
    miner: str = "self_paced"
    spl_threshold: str = "quantile"
    patch_size: int = 32
    augmentation: str = "light"
    per_level: int = 16
    steps: int = 300
    temperature: float = 0.07
    lr: float = 1e-3
    weight_decay: float = 5e-4
    projection_dim: int = 128
    negatives_from: str = "view2"


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

    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    val_fraction: float = 0.15


@dataclass
class ComclConfig:
    """The whole CoMCL run.

    Attributes:
        preset: Name of the preset this config started from.
        seed: Seed of training (model init, sampling, augmentation).
        backbone: torchvision backbone name (paper: resnet50).
        num_classes: DR grades (5), or chest classes (9: No Finding + the ChestX-ray8 findings).
        lq_ratios: Test-time low-quality ratios to evaluate, besides the original (paper: 0.7, 1.0).
        data: :class:`DataConfig`.
        pretrain: :class:`PretrainConfig`.
        finetune: :class:`FinetuneConfig`.
        progress: Show progress bars.
    """

    preset: str = "default"
    seed: int = 0
    backbone: str = "resnet10"
    num_classes: int = 5
    lq_ratios: tuple[float, ...] = (0.7, 1.0)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    progress: bool = True


PRESETS: dict[str, ComclConfig] = {
    # seconds: for tests and CI
    "smoke": ComclConfig(
        preset="smoke",
        data=DataConfig(num_images=48, image_size=64),
        pretrain=PretrainConfig(patch_size=24, per_level=4, steps=4, projection_dim=32),
        finetune=FinetuneConfig(epochs=1, batch_size=16),
        progress=False,
    ),
    # minutes on 2 CPU cores: the README's main job
    "default": ComclConfig(),
    # the paper's hyper-parameters, for a GPU and the real data
    "paper": ComclConfig(
        preset="paper",
        backbone="resnet50",
        data=DataConfig(dataset="eyeq", image_size=512, boxes="detector.safetensors"),
        pretrain=PretrainConfig(
            patch_size=128, augmentation="paper", per_level=100, steps=800 * 30, projection_dim=128
        ),
        finetune=FinetuneConfig(epochs=25, batch_size=16, lr=1e-3),
    ),
}

#: Ablation variants (CoMCL Tables 2 and 3): name → dotted overrides of the pretrain section.
ABLATIONS: dict[str, dict[str, object]] = {
    "baseline": {"method": "none"},
    "basic_cl": {"method": "simclr"},
    "wo_multi_level": {"pairs": (("lesion", "healthy"),)},
    "wo_spl": {"miner": "none"},
    "comcl": {},
    "v1_L_LQL": {"pairs": (("L", "LQ_L"),)},
    "v2_L_LQL_H": {"pairs": (("L", "LQ_L"), ("L", "H"))},
    # not in the paper: its printed threshold lambda_t = 1 / K_t instead of qualcl's quantile default
    "spl_literal": {"spl_threshold": "literal"},
}


#: Settings a dataset implies: ``{dataset: ({top-level field: value}, {data field: value})}``.
DATASET_DEFAULTS: dict[str, tuple[dict[str, object], dict[str, object]]] = {
    "nih-cxr14": ({"num_classes": 9}, {"lq_ratio": 0.432, "boxes": "ground_truth"}),
}


def headline_metric(config: ComclConfig) -> str:
    """The kappa a run reports and selects by: ``"qwk"`` for ordered DR grades, ``"kappa"`` for chest classes."""
    return "kappa" if config.data.dataset == "nih-cxr14" else "qwk"


def comcl_config(preset: str = "default", **data_overrides: object) -> ComclConfig:
    """A copy of preset ``preset`` with ``data`` fields replaced (e.g. ``dataset``, ``data_dir``).

    A ``dataset`` also brings its :data:`DATASET_DEFAULTS` (``nih-cxr14``: 9 classes, 43.2 % LQ),
    unless ``data_overrides`` set them.

    Example:
        >>> comcl_config("smoke", dataset="nih-cxr14", data_dir="NIH").num_classes
        9
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = dataclasses.replace(PRESETS[preset])
    top, data = DATASET_DEFAULTS.get(str(data_overrides.get("dataset", config.data.dataset)), ({}, {}))
    config = dataclasses.replace(config, **top)  # type: ignore[arg-type]
    config.data = dataclasses.replace(config.data, **{**data, **data_overrides})  # type: ignore[arg-type]
    config.pretrain = dataclasses.replace(config.pretrain)
    config.finetune = dataclasses.replace(config.finetune)
    return config
