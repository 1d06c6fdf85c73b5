"""MKCNet recipe configuration: dataclasses, the per-dataset settings of the paper, presets and the ablation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from qualcl.recipes.config import Claim, RecipeConfig, RecipeSpec, Variant, bounded, check_cnn_encoder
from qualcl.recipes.config import DataConfig as BaseDataConfig

__all__ = [
    "ABLATIONS",
    "DATASETS",
    "LQ_SWEEP",
    "SPEC",
    "SWEEP_BASES",
    "DataConfig",
    "MkcnetConfig",
    "ModelConfig",
    "TrainConfig",
    "sweep_name",
]


class DatasetSettings(NamedTuple):
    """The official code's per-dataset settings (its ``configs/*.yaml``; docs/mkcnet.md, "Datasets").

    ``scheme`` is the key of the dataset's :class:`~qualcl.data.readers.QualityScheme`; the other
    fields set the config fields of the same names (``train.*``, ``model.slice_length``, ``data.*``;
    an empty ``mean`` computes the normalisation from the training images).
    """

    scheme: str
    batch_size: int
    epochs: int
    meta_lr: float
    lr_step: int
    slice_length: int
    entropy_weight: float
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


#: Settings per ``--dataset``. The synthetic fundus set is EyeQ-like (EyeQ's quality codes and the
#: 5 → 3 grade mapping) and is normalised with statistics of its own training images.
DATASETS: dict[str, DatasetSettings] = {
    "synthetic": DatasetSettings("eyeq", 4, 100, 1e-3, 25, 5, 0.2, 3, (), ()),
    "eyeq": DatasetSettings("eyeq", 4, 100, 1e-3, 25, 5, 0.2, 3, (0.4021, 0.2667, 0.1847), (0.2991, 0.2090, 0.1680)),
    "deepdrid": DatasetSettings(
        "deepdrid", 4, 200, 1e-3, 20, 7, 0.3, 3, (0.3771, 0.2320, 0.1395), (0.1252, 0.0857, 0.0814)
    ),
    "drac": DatasetSettings("drac", 8, 200, 1e-2, 50, 10, 0.5, 1, (0.4134,), (0.0595,)),
    "ct-iqad": DatasetSettings("ct_iqad", 4, 200, 1e-2, 20, 5, 0.2, 1, (0.6269,), (0.2909,)),
    "cxr-iqad": DatasetSettings("cxr_iqad", 8, 200, 1e-3, 20, 7, 0.3, 1, (0.4813,), (0.2361,)),
}


@dataclass
class DataConfig(BaseDataConfig):
    """Where the images come from and how they are split and normalised.

    ``image_size`` is the side of the (square) network input (paper: 256). For ``cxr-iqad``
    ``data_dir`` holds ``kermany/`` (Kermany ``chest_xray``) and ``nih/`` (NIH ChestX-ray14); for
    ``ct-iqad`` it holds ``hq/`` (SARS-CoV-2 CT-scan) and ``lq/`` (COVID-CT).

    Attributes:
        dataset: One of :data:`DATASETS` (``synthetic``: generated and cached).
        val_fraction: Share of the training patients held out for model selection (EyeQ: 60/10/30).
        test_fraction: Share of the images in the test split of a set without one (DRAC, CXR-IQAD, CT-IQAD: 70/10/20).
        train_lq_fraction: Share of the training LQ images kept, all HQ images kept (paper Fig. 5).
        channels: Input channels (3 fundus, 1 OCTA / CT / X-ray).
        mean: Normalisation mean per channel; empty computes it from the training images.
        std: Normalisation std per channel.
    """

    dataset: Literal["synthetic", "eyeq", "deepdrid", "drac", "cxr-iqad", "ct-iqad"] = "synthetic"
    val_fraction: float = bounded(0.1, "in [0, 1)")
    test_fraction: float = bounded(0.2, "in [0, 1)")
    train_lq_fraction: float = 1.0
    channels: int = 3
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.mean and (len(self.mean) != self.channels or len(self.std) != self.channels):
            raise ValueError(f"data.mean and data.std need {self.channels} values each")


@dataclass
class ModelConfig:
    """Task Net and Meta Learner architecture, with the switches of the paper's ablations.

    Attributes:
        backbone: CNN of both sub-nets, trained from scratch (paper: ``vgg16_bn``; the ``smoke`` and
            ``default`` presets: ``resnet10``, ~10× cheaper per CPU epoch, ``benchmarks/results/meta_step_cpu.md``).
        init: ``"xavier"`` (the official code: Xavier-uniform convolutions, zero bias) or ``"torchvision"``.
        feature_dim: Width of ``f^d``, ``f^ω``, ``f^q`` (0: half the backbone width, 256 for VGG).
        gab: ``"cbam"`` (global attention block) or ``"fc"`` (MKCNet-FC: pooling + linear).
        gab_input: ``"map"`` (the paper: CBAM on the last feature map) or ``"pooled"`` (the official code).
        assist: ``"gated"`` (MAB), ``"concat"`` (MKCNet-Con) or ``"none"`` (w/o MAB: ``f^d`` alone).
        assist_from: ``"co_embedding"`` (``f^ω``) or ``"quality"`` (w/o Meta: ``f^q`` assists).
        quality_head: Train the image-quality branch.
        meta: Train the co-embedding branch with the Meta Learner's targets (two-stage loop).
        mask_by: ``"joint"`` (joint-encoding masking), ``"quality"`` or ``"diagnosis"`` (masking by
            one label only; the output length ``L · N_d · N_q`` is kept, slices are regrouped).
        slice_length: ``META_LENGTH`` ``L``.
        mask_eps: Mask value outside the slice (0 exact; the official code 1e-8).
    """

    backbone: str = "vgg16_bn"
    init: Literal["xavier", "torchvision"] = "xavier"
    feature_dim: int = bounded(0, ">= 0")
    gab: Literal["cbam", "fc"] = "cbam"
    gab_input: Literal["map", "pooled"] = "map"
    assist: Literal["gated", "concat", "none"] = "gated"
    assist_from: Literal["co_embedding", "quality"] = "co_embedding"
    quality_head: bool = True
    meta: bool = True
    mask_by: Literal["joint", "quality", "diagnosis"] = "joint"
    slice_length: int = 5
    mask_eps: float = 0.0

    def __post_init__(self) -> None:
        check_cnn_encoder(self.backbone, "model.backbone")
        if self.assist != "none" and self.assist_from == "co_embedding" and not self.meta:
            raise ValueError("model.assist from the co-embedding needs model.meta=true; use model.assist=none")
        if self.assist != "none" and self.assist_from == "quality" and not self.quality_head:
            raise ValueError("model.assist_from=quality needs model.quality_head=true")


@dataclass
class TrainConfig:
    """Optimisation (the official code: SGD without momentum, StepLR(γ 0.5) on both nets).

    Attributes:
        epochs: Training epochs (each is two passes over the training set when ``model.meta``).
        batch_size: Images per batch, at least 2 (a last batch of one image is dropped: BatchNorm needs two).
        lr: Task Net SGD learning rate; also ``α`` of the pseudo update.
        momentum: Task Net SGD momentum (official: 0).
        weight_decay: Task Net weight decay, also inside the pseudo update.
        meta_lr: Meta Learner SGD learning rate.
        meta_weight_decay: Meta Learner weight decay.
        lr_step: StepLR step in epochs.
        lr_gamma: StepLR factor.
        entropy_weight: ``w_ent`` of the batch-entropy regulariser in the outer loss.
        focal_gamma: Focal-loss ``γ`` of all three losses.
        meta_mode: ``"second_order"``, ``"finite_difference"`` (the official first-order script)
            or ``"first_order"`` (see :class:`~qualcl.optim.MetaAuxiliaryOptimizer`).
        meta_batch: ``"same"`` (the official code: inner and outer loss on the same batch) or ``"split"``
            (MAXL's held-out data: the inner loss and the entropy on one half of the batch, the outer on the other).
        val_every: Validate (and select the best model by AUC) every this many epochs.
    """

    epochs: int = 20
    batch_size: int = bounded(16, ">= 2")
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 5e-4
    meta_lr: float = 1e-3
    meta_weight_decay: float = 5e-4
    lr_step: int = 10
    lr_gamma: float = 0.5
    entropy_weight: float = 0.2
    focal_gamma: float = 2.0
    meta_mode: Literal["second_order", "finite_difference", "first_order"] = "second_order"
    meta_batch: Literal["same", "split"] = "same"
    val_every: int = 1

    def __post_init__(self) -> None:
        if self.meta_batch == "split" and self.batch_size < 4:
            raise ValueError(f"train.meta_batch='split' needs train.batch_size >= 4, got {self.batch_size}")


@dataclass
class MkcnetConfig(RecipeConfig):
    """The whole run: data, model, train sections; preset, seed and trainer come from RecipeConfig.

    ``legacy_auc`` reports the official code's hard-label AUC on binary sets (:func:`qualcl.metrics.diagnosis_metrics`).
    """

    legacy_auc: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


#: ``{preset: overrides of the MkcnetConfig defaults}``.
PRESETS: dict[str, dict[str, Any]] = {
    # seconds: for tests and CI
    "smoke": {
        "trainer": {"progress": False},
        "data": {"num_images": 48, "image_size": 48},
        "model": {"backbone": "resnet10_tiny", "feature_dim": 32, "slice_length": 2},
        "train": {"epochs": 2, "batch_size": 8, "lr_step": 1},
    },
    # minutes on 2 CPU cores (momentum: see docs/mkcnet.md, "Deviations of the default preset")
    "default": {"model": {"backbone": "resnet10"}, "train": {"momentum": 0.9}},
    # the paper's settings, for a GPU and the real data (per-dataset values come from DATASETS)
    "paper": {
        "data": {"dataset": "eyeq", "image_size": 256},
        "model": {"backbone": "vgg16_bn"},
        "train": {"epochs": 100, "batch_size": 4, "lr_step": 25},
    },
}


def dataset_settings(dataset: str, preset: str) -> dict[str, Any]:
    """The dataset's settings (table :data:`DATASETS`) as config overrides.

    Channels, normalisation, entropy weight and meta learning rate always apply, ``L`` except in ``smoke``;
    only ``paper`` takes the batch size, epochs and StepLR step (``smoke``, ``default``: short CPU schedules).

    Examples:
        >>> dataset_settings("drac", "paper")["train"]["epochs"], dataset_settings("drac", "paper")["data"]["channels"]
        (200, 1)
    """
    s = DATASETS.get(dataset)
    if s is None:  # an unknown name: the config refuses it at data.dataset
        return {}
    train = {"meta_lr": s.meta_lr, "entropy_weight": s.entropy_weight}
    if preset == "paper":
        train |= {"batch_size": s.batch_size, "epochs": s.epochs, "lr_step": s.lr_step}
    model = {"slice_length": s.slice_length} if preset != "smoke" else {}
    return {"data": {"channels": s.channels, "mean": s.mean, "std": s.std}, "model": model, "train": train}


_PLAIN = ("model.meta=false", "model.assist=none", "model.gab=fc")  # no Meta Learner, MAB or GAB
#: The paper's component and masking ablations (Fig. 4 and Fig. 6): name → label and ``--set`` overrides.
_COMPONENTS: dict[str, Variant] = {
    "vanilla": Variant("Vanilla (backbone + diagnosis head)", ("model.quality_head=false", *_PLAIN)),
    "multitask": Variant("+ quality head (plain multi-task)", _PLAIN),
    "wo_meta": Variant(
        "MKCNet w/o Meta (f^q assists through the MAB)", ("model.meta=false", "model.assist_from=quality")
    ),
    "wo_mab": Variant("MKCNet w/o MAB (diagnosis on f^d alone)", ("model.assist=none",)),
    "mkcnet_fc": Variant("MKCNet-FC (GABs replaced by FC layers)", ("model.gab=fc",)),
    "mkcnet_con": Variant("MKCNet-Con (f^ω concatenated, not gated)", ("model.assist=concat",)),
    "mask_quality": Variant("masking by quality only", ("model.mask_by=quality",)),
    "mask_diagnosis": Variant("masking by diagnosis only", ("model.mask_by=diagnosis",)),
    "mkcnet": Variant("MKCNet (joint-encoding masking)"),
}

#: The low-quality-ratio sweep (paper Fig. 5): share of the training LQ images kept, HQ all kept.
LQ_SWEEP: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: The variants the sweep trains (at 100 % they are the component variants themselves).
SWEEP_BASES: tuple[str, ...] = ("vanilla", "mkcnet")


def sweep_name(base: str, fraction: float) -> str:
    """The sweep variant of ``base`` keeping ``fraction`` of the training LQ images (``base`` itself at 1).

    Examples:
        >>> sweep_name("mkcnet", 0.25), sweep_name("vanilla", 1.0)
        ('mkcnet@lq25', 'vanilla')
    """
    return base if fraction == 1.0 else f"{base}@lq{round(100 * fraction)}"


#: The ablation (``qualcl run mkcnet --ablation``): the components, then the sweep ``vanilla@lq0`` …
#: ``mkcnet@lq75`` (the base variant's overrides and ``data.train_lq_fraction``).
ABLATIONS: dict[str, Variant] = _COMPONENTS | {
    sweep_name(base, fraction): Variant(
        f"{_COMPONENTS[base].label.split(' (')[0]}, {fraction:.0%} of the training LQ images",
        (*_COMPONENTS[base].overrides, f"data.train_lq_fraction={fraction}"),
    )
    for fraction in LQ_SWEEP
    if fraction < 1.0  # at 100 % the base variant itself
    for base in SWEEP_BASES
}

SPEC = RecipeSpec(
    "mkcnet",
    MkcnetConfig,
    PRESETS,
    data_help="dataset folder; cxr-iqad wants kermany/ and nih/ inside it, ct-iqad hq/ and lq/",
    set_example="train.epochs=5",
    dataset_settings=dataset_settings,
    ablations=ABLATIONS,
    claims=(  # the paper's Table 3: MKCNet above Vanilla in AUC and F1
        Claim("MKCNet diagnoses better than Vanilla (AUC)", "mkcnet", "vanilla", "auc"),
        Claim("MKCNet diagnoses better than Vanilla (macro F1)", "mkcnet", "vanilla", "macro_f1"),
    ),
)
