"""Mirror-retrieval recipe configuration: dataclasses, presets and the ablation variants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from qualcl.recipes.config import Claim, RecipeConfig, RecipeSpec, Variant, bounded, check_cnn_encoder
from qualcl.recipes.config import DataConfig as BaseDataConfig

__all__ = ["ABLATIONS", "SPEC", "DataConfig", "EvalConfig", "MirrorRetrievalConfig", "ModelConfig", "TrainConfig"]


@dataclass
class DataConfig(BaseDataConfig):
    """Where the images come from and how database, validation and query sets are formed.

    The database is the training + validation images, the queries the test images (the public
    FundusDR code's protocol); validation retrieves within the validation images (leave one out) to
    select the best epoch. The shared fields are :class:`qualcl.recipes.config.DataConfig`'s.

    Attributes:
        dataset: ``"synthetic"`` (the embedded SynthFundus set, generated once), ``"eyepacs"``
            (Kaggle ``trainLabels.csv``; no quality labels: one stratum ``"unrated"``) or
            ``"eyeq"`` (EyeQ's label files: quality levels Good / Usable / Reject).
        image_size: Side of the network input (the public code: 256).
        val_fraction: Share of the training patients held out for validation (synthetic, EyeQ).
        split: EyePACS only: ``"fundusdr"`` (the public code's image-level split: 20 % test with
            random state 11, then 10 % validation with random state 22) or ``"patient"`` (the same
            procedure over patient ids, so both eyes of a patient stay in one split).
    """

    dataset: Literal["synthetic", "eyepacs", "eyeq"] = "synthetic"
    image_size: int = bounded(96, ">= 32")
    val_fraction: float = bounded(0.1, "in (0, 1)")
    split: Literal["fundusdr", "patient"] = "fundusdr"


@dataclass
class ModelConfig:
    """Encoder, mirror attention, descriptor and the optional heads.

    Attributes:
        encoder: Any CNN of :func:`qualcl.models.build_encoder` (``resnet10`` on the CPU; the public
            code's U-Net trunk is ``unet``); the block sits on its last feature map.
        attention: ``"none"`` (GeM of the last map), ``"official"`` (the public code's block, its
            quirks included) or ``"intended"`` (qualcl's reading of the paper); see
            :class:`qualcl.heads.MirrorAttention`.
        reduction: Channel reduction of the block's embeddings (the public code: 2).
        mirrors: What the block attends to: ``"encode"`` (the encoder applied to the deterministic
            horizontal and vertical flips of the image: three passes), ``"random"`` (the public
            code: each flip applied with probability 0.5 during training; deterministic flips at
            evaluation) or ``"feature"`` (the image's own feature maps flipped: one pass).
        gem_p: Initial GeM exponent.
        gem_learnable: Learn the GeM exponent.
        reconstruction: Reconstruct each mirror from its attention output with a U-Net decoder
            (the public code's decoders; sigmoid output, MSE).
        reconstruction_from: Finest pyramid level the decoder uses: 0 decodes to the finest map's
            resolution (the public code: the full image); 2 stops at 1/8 of the input for a ResNet
            (the CPU presets: the full-resolution decoder costs twice the rest of a step).
        classifier: A grade classifier on the descriptor (the public code's Linear + sigmoid, BCE on
            one-hot grades).
        projection: Width of the descriptor after a linear projection (with bias) of the GeM
            descriptor, which is then the descriptor that is trained and searched; 0 (default, the
            paper and the public code): none. With mirror attention one projection to ``P / 2`` is
            shared by the two branches (``P`` must be even), so the descriptor's halves stay the
            horizontal and vertical branches in one space: the fine triplet loss weighs pairs by
            their cosine agreement. GeM of ReLU maps lies in the positive orthant, where no two
            descriptors are more than 90° apart; a projection lets the metric loss use the whole sphere.
    """

    encoder: str = "resnet10"
    attention: Literal["none", "official", "intended"] = "intended"
    reduction: int = bounded(2, ">= 1")
    mirrors: Literal["encode", "random", "feature"] = "encode"
    gem_p: float = 3.0
    gem_learnable: bool = True
    reconstruction: bool = False
    reconstruction_from: int = bounded(0, "in [0, 3]")
    classifier: bool = False
    projection: int = bounded(0, ">= 0")

    def __post_init__(self) -> None:
        check_cnn_encoder(self.encoder, "model.encoder")
        if self.reconstruction and self.attention == "none":
            raise ValueError("model.reconstruction decodes the mirror-attention outputs: it needs model.attention")
        if self.projection % 2 and self.attention != "none":
            raise ValueError(
                f"model.projection must be even with mirror attention (its two branches share one projection "
                f"to half the width each), got {self.projection}"
            )


@dataclass
class TrainConfig:
    """Optimisation (the public code: Adam 1e-3, betas (0.9, 0.999), weight decay 1e-5, constant rate).

    Attributes:
        epochs: Training epochs.
        batch_size: Images per batch (at least 4: pairs and BatchNorm; the public code: 24).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        metric_weight: Weight of the metric loss.
        reconstruction_weight: Weight of the two mirror-reconstruction MSEs.
        classifier_weight: Weight of the BCE grade loss.
        metric_loss: ``"circle"`` (:class:`qualcl.losses.CircleLoss`), ``"fine_triplet"``
            (:class:`qualcl.losses.FineTripletLoss`: positive pairs weighted by the mirror halves'
            agreement; needs mirror attention), ``"triplet"`` (pytorch-metric-learning's
            ``TripletMarginLoss`` on :func:`qualcl.kernels.batch_hard_triplets`) or ``"none"``.
        margin: Circle / fine-triplet margin ``m``.
        gamma: Circle scale ``γ`` (also the fine triplet loss's ``scale``).
        triplet_margin: Margin of the triplet loss (cosine similarity).
        aggregate: Circle aggregation, ``"per_anchor"`` (pytorch-metric-learning's) or ``"global"``
            (the public code's one log over all pairs).
        relevance: Fine triplet pair weights: ``"mirror_agreement"`` (``deg_j / deg_i``, the code's)
            or ``"symmetric"`` (``sqrt(deg_i · deg_j)``).
    """

    epochs: int = 12
    batch_size: int = bounded(32, ">= 4")
    lr: float = 1e-3
    weight_decay: float = 1e-5
    metric_weight: float = 1.0
    reconstruction_weight: float = 1.0
    classifier_weight: float = 1.0
    metric_loss: Literal["circle", "fine_triplet", "triplet", "none"] = "fine_triplet"
    margin: float = 0.25
    gamma: float = 1.0
    triplet_margin: float = 0.2
    aggregate: Literal["per_anchor", "global"] = "per_anchor"
    relevance: Literal["mirror_agreement", "symmetric"] = "mirror_agreement"


@dataclass
class EvalConfig:
    """Retrieval evaluation.

    Attributes:
        k: Cut-off of P@k, R@k, mAP@k, NDCG@k, HR@k (the public code: 10).
        grid_queries: Queries per quality level in the top-k grid plot.
    """

    k: int = 10
    grid_queries: int = bounded(2, ">= 1")


@dataclass
class MirrorRetrievalConfig(RecipeConfig):
    """The whole run: data, model, train, eval sections; preset, seed and trainer come from RecipeConfig.

    Across sections: ``train.metric_loss="fine_triplet"`` needs mirror attention, ``"none"`` a head to train.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.train.metric_loss == "fine_triplet" and self.model.attention == "none":
            raise ValueError("train.metric_loss='fine_triplet' weighs pairs by the mirror halves: set model.attention")
        if self.train.metric_loss == "none" and not (self.model.classifier or self.model.reconstruction):
            raise ValueError("train.metric_loss='none' needs model.classifier or model.reconstruction to train")


#: ``{preset: overrides of the defaults}``.
PRESETS: dict[str, dict[str, Any]] = {
    # seconds: for tests and CI
    "smoke": {
        "trainer": {"progress": False},
        "data": {"num_images": 48, "image_size": 64},
        "model": {"encoder": "resnet10_tiny", "reconstruction": True, "reconstruction_from": 2},
        "train": {"epochs": 2, "batch_size": 8},
        "eval": {"k": 5, "grid_queries": 1},
    },
    # minutes on 2 CPU cores: the full method (mirror attention, fine triplet loss, reconstruction)
    "default": {"model": {"reconstruction": True, "reconstruction_from": 2, "mirrors": "feature"}},
    # the public code's settings, for a GPU and the real data
    "paper": {
        "data": {"dataset": "eyepacs", "image_size": 256},
        "model": {"encoder": "unet", "reconstruction": True},
        "train": {"epochs": 20, "batch_size": 24, "gamma": 1.0, "aggregate": "global"},
    },
}

_PLAIN = ("model.reconstruction=false", "model.classifier=false")


def _variant(label: str, attention: str, loss: str, heads: tuple[str, ...] = _PLAIN) -> Variant:
    """An ablation variant: ``model.attention``, the heads, ``train.metric_loss``."""
    return Variant(label, (f"model.attention={attention}", *heads, f"train.metric_loss={loss}"))


#: The ablation (``qualcl run mirror-retrieval --ablation``): descriptor, loss, mirror attention, heads.
ABLATIONS: dict[str, Variant] = {
    "gem_triplet": _variant("GeM + triplet (PML TripletMarginLoss, batch-hard)", "none", "triplet"),
    "gem_circle": _variant("GeM + circle loss", "none", "circle"),
    "ma_official": _variant("+ mirror attention (official)", "official", "circle"),
    "ma_intended": _variant("+ mirror attention (intended)", "intended", "circle"),
    "fine_triplet": _variant("+ fine triplet loss (relevance-weighted positives)", "intended", "fine_triplet"),
    "fine_triplet_recon": _variant(
        "+ mirror reconstruction (full method)",
        "intended",
        "fine_triplet",
        ("model.reconstruction=true", "model.classifier=false"),
    ),
    "public_bce": _variant(
        "public code's training (official block, random flips, BCE only)",
        "official",
        "none",
        ("model.mirrors=random", "model.reconstruction=false", "model.classifier=true"),
    ),
}

SPEC = RecipeSpec(
    "mirror-retrieval",
    MirrorRetrievalConfig,
    PRESETS,
    data_help="dataset folder (eyepacs: trainLabels.csv and the images; eyeq: Label_EyeQ_{train,test}.csv)",
    set_example="model.attention=official",
    ablations=ABLATIONS,
    claims=(  # the full method above GeM + circle and above the public code's BCE-only training (P@10)
        Claim("mirror attention + fine triplet beats GeM + circle", "fine_triplet_recon", "gem_circle", "precision@10"),
        Claim("the full method beats the public code's training", "fine_triplet_recon", "public_bce", "precision@10"),
    ),
)
