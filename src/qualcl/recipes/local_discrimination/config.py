"""Local-discrimination recipe configuration: dataclasses, presets and the baseline variants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from qualcl.recipes.config import (
    FULL_RESOLUTION_ENCODERS,
    Claim,
    RecipeConfig,
    RecipeSpec,
    Variant,
    bounded,
    check_cnn_encoder,
)
from qualcl.recipes.config import DataConfig as BaseDataConfig

__all__ = [
    "ABLATIONS",
    "SPEC",
    "DataConfig",
    "EvalConfig",
    "LocalDiscriminationConfig",
    "ModelConfig",
    "PretrainConfig",
    "ShapeConfig",
    "TransferConfig",
]


@dataclass
class DataConfig(BaseDataConfig):
    """Images for pre-training (unlabelled) and the labelled segmentation splits (the shared fields: the base's).

    Attributes:
        dataset: ``"synthetic"`` (the embedded SynthFundus set: vessel, optic-disc and exudate
            masks, disc and fovea landmarks, quality levels) or a real segmentation set read by
            :func:`qualcl.data.readers.read_segmentation` (``drive`` = DRIVE/RITE, ``stare``,
            ``chase`` = CHASE_DB1, ``hrf``, ``idrid``, ``drishti`` = Drishti-GS1).
        image_size: A multiple of 16, the encoder pools 4 times (the code: 448 crops of 512-px images).
        labelled: Labelled training images of the segmentation transfer (``0``: all of the
            training split; the synthetic default keeps a DRIVE-like few).
        val_fraction: Share of the labelled images held out to select the best epoch (the code: 0.2).
        test_fraction: Share of the images tested on for datasets without a split (STARE, CHASE_DB1, HRF).
    """

    dataset: Literal["synthetic", "drive", "stare", "chase", "hrf", "idrid", "drishti"] = "synthetic"
    num_images: int = 400
    image_size: int = bounded(64, ">= 32", multiple_of=16)
    labelled: int = 24
    val_fraction: float = bounded(0.2, "in (0, 1)")
    test_fraction: float = bounded(0.5, "in (0, 1)")


@dataclass
class ModelConfig:
    """Encoder, decoder and heads (the code's ``vgg16_bn_tiny`` + U-Net decoder + two branches).

    Attributes:
        encoder: ``vgg16_bn_tiny`` (the code) or a full-resolution pyramid CNN (``vgg16_bn*``, ``unet*``; no ResNet).
        dim: Pixel-embedding size (``low_dim`` = 32).
        clusters: Clusters of the clustering branch (``cluster_num`` = 16).
    """

    encoder: str = "vgg16_bn_tiny"
    dim: int = 32
    clusters: int = bounded(16, ">= 2")

    def __post_init__(self) -> None:
        check_cnn_encoder(self.encoder, "model.encoder")
        if self.encoder not in FULL_RESOLUTION_ENCODERS:  # a pyramid from stride 2: the decoder would end at half size
            raise ValueError(
                f"model.encoder needs a full-resolution first map (one of {list(FULL_RESOLUTION_ENCODERS)}), "
                f"got {self.encoder!r}"
            )


@dataclass
class PretrainConfig:
    """Self-supervised pre-training: the method, its two stages and their schedule.

    Attributes:
        method: ``"ld"`` (patch discrimination + mixup, then + region discrimination and entropy:
            the paper), ``"ld_stage1"`` (the first stage only), ``"simclr"`` (image-level NT-Xent on
            the pooled encoder features, a baseline), ``"dense"`` (a DenseCL-style dense InfoNCE
            between corresponding patch cells, a baseline) or ``"none"`` (random initialisation).
        batch_size: Items per step ``B`` (each gives five images: four views and the mixup; the code: 4).
        steps_per_epoch: Steps of an epoch (the code: 1000).
        stage1_epochs: Epochs of stage 1 (the code: 20).
        stage2_epochs: Epochs of stage 2 (the code: 80).
        lr: Adam learning rate (1e-3).
        halve_every: Epochs between halvings of the rate (10).
        grid: Patch grid side (``region_output_size`` = 8).
        temperature: Patch / mixup criterion temperature (0.1).
        region_temperature: Region-discrimination temperature (0.2).
        region_weight: Weight of region discrimination (10).
        entropy_weight: Weight of the assignment entropy (0.1).
        crop_scale: Lower area bound of the resized crop (0.9).
        rotation: Maximum rotation of each image (180°).
    """

    method: Literal["ld", "ld_stage1", "simclr", "dense", "none"] = "ld"
    batch_size: int = bounded(4, ">= 2")
    steps_per_epoch: int = 40
    stage1_epochs: int = bounded(4, ">= 1")
    stage2_epochs: int = 4
    lr: float = 1e-3
    halve_every: int = 10
    grid: int = 8
    temperature: float = 0.1
    region_temperature: float = 0.2
    region_weight: float = 10.0
    entropy_weight: float = 0.1
    crop_scale: float = 0.9
    rotation: float = 180.0


@dataclass
class TransferConfig:
    """Segmentation transfer of the encoder: frozen, then fine-tuned from the best frozen epoch.

    Attributes:
        tasks: Masks to segment (``()``: every mask the dataset has; synthetic: vessels, OD, EX).
        frozen_epochs: Epochs with the encoder frozen (the code: 100).
        finetune_epochs: Epochs fine-tuning everything (the code: 100).
        batch_size: Images per step, at least 2 for BatchNorm (the code: 2).
        lr: Adam learning rate (1e-3).
        per_image_dice: The soft-Dice loss's form. ``False`` (the code's ``dice_loss``, which
            flattens the batch): one Dice over every pixel of the step's batch, so images weigh by
            their foreground area; ``True``: the mean of one Dice per image. Under DDP either form
            is computed on the global batch (:func:`~qualcl.recipes.local_discrimination.modules.build_losses`).
    """

    tasks: tuple[str, ...] = ()
    frozen_epochs: int = bounded(15, ">= 1")
    finetune_epochs: int = 15
    batch_size: int = bounded(4, ">= 2")
    lr: float = 1e-3
    per_image_dice: bool = False


@dataclass
class ShapeConfig:
    """Shape-guided segmentation: LD with an adversarial shape prior on cluster channel 0.

    Attributes:
        enabled: Train it (needs prior masks: the synthetic vessel masks of the pre-training images).
        epochs: Epochs, each of ``pretrain.steps_per_epoch`` steps, from the stage-1 weights.
        clusters: Clusters ``K`` (8 in the code).
        adversarial_weight: Weight of the generator term ``BCE(D(fake), 1)`` (1).
        discriminator_lr_ratio: Discriminator learning rate relative to ``pretrain.lr`` (0.05).
        leaky_quirk: Reproduce ``nn.LeakyReLU(True)`` (negative slope 1.0: identity activations)
            in the discriminator, as the code; ``False`` uses slope 0.2.
    """

    enabled: bool = True
    epochs: int = 4
    clusters: int = 8
    adversarial_weight: float = 1.0
    discriminator_lr_ratio: float = 0.05
    leaky_quirk: bool = False


@dataclass
class EvalConfig:
    """One-shot landmark localisation (qualcl's design) and the plots.

    Attributes:
        landmark_sigma: Width (px) of the centre weighting of template and queries.
        radii: Success radii (px at ``data.image_size``) of the SDR.
        shown: Test images in the plot grids.
    """

    landmark_sigma: float = 2.0
    radii: tuple[float, ...] = (2.0, 4.0, 8.0)
    shown: int = 4


@dataclass
class LocalDiscriminationConfig(RecipeConfig):
    """The whole run: its six sections; preset, seed and trainer come from RecipeConfig."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    shape: ShapeConfig = field(default_factory=ShapeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.data.image_size % self.pretrain.grid:
            raise ValueError(
                f"data.image_size {self.data.image_size} must be a multiple of pretrain.grid {self.pretrain.grid} "
                "(the recorded turns realign patch grids exactly only then)"
            )


#: ``{preset: overrides of the defaults}``.
PRESETS: dict[str, dict[str, Any]] = {
    # seconds: tests and CI
    "smoke": {
        "trainer": {"progress": False},
        "data": {"num_images": 40, "image_size": 48, "labelled": 8},
        "pretrain": {"steps_per_epoch": 3, "stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 2, "grid": 4},
        "transfer": {"frozen_epochs": 1, "finetune_epochs": 1, "batch_size": 4},
        "shape": {"epochs": 1},
        "model": {"encoder": "vgg16_bn_micro"},
        "eval": {"shown": 2, "radii": (2.0, 4.0)},
    },
    # minutes on 2 CPU cores
    "default": {},
    # the code's settings, for a GPU and the real data
    "paper": {
        "data": {"image_size": 448, "labelled": 0},
        "pretrain": {"steps_per_epoch": 1000, "stage1_epochs": 20, "stage2_epochs": 80},
        "transfer": {"frozen_epochs": 100, "finetune_epochs": 100, "batch_size": 2},
        "shape": {"epochs": 20, "leaky_quirk": True},
    },
}

#: Baselines and ablation (``qualcl run local-discrimination --ablation``), each without the shape-guided stage.
ABLATIONS: dict[str, Variant] = {
    name: Variant(label, (f"pretrain.method={method}", "shape.enabled=false"))
    for name, method, label in (
        ("random", "none", "random initialisation"),
        ("simclr", "simclr", "SimCLR (image-level NT-Xent)"),
        ("dense", "dense", "dense InfoNCE (DenseCL-style, known correspondence)"),
        ("ld_stage1", "ld_stage1", "LD stage 1 (patch discrimination + mixup)"),
        ("ld", "ld", "LD (+ region discrimination, entropy)"),
    )
}


SPEC = RecipeSpec(
    "local-discrimination",
    LocalDiscriminationConfig,
    PRESETS,
    data_help=(
        "dataset folder: drive (training/, test/), stare (stare-images/, labels-ah/), chase (Image_NNx.jpg + "
        "_1stHO.png), hrf (images/, manual1/), idrid (A. Segmentation/), drishti (Training/, Test/)"
    ),
    set_example="pretrain.method=simclr",
    ablations=ABLATIONS,
    claims=(  # the paper's Table 3: LD above stage 1, SimCLR and random initialisation (fine-tuned Dice)
        *(Claim(f"LD beats LD stage 1 on {t}", "ld", "ld_stage1", f"{t}/finetuned") for t in ("vessels", "OD", "EX")),
        Claim("LD beats SimCLR on vessels", "ld", "simclr", "vessels/finetuned"),
        Claim("LD beats random initialisation on vessels", "ld", "random", "vessels/finetuned"),
    ),
)
