"""MKCNet's two sub-networks wired from qualcl heads: the Task Net and the Meta Learner."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from qualcl.heads import GlobalAttentionBlock, MetaKnowledgeAssistanceBlock, MetaLabelGenerator
from qualcl.models import Encoder, build_encoder
from qualcl.recipes.mkcnet.config import ModelConfig

__all__ = ["TaskNet", "TaskOutput", "build_meta_learner", "build_task_net", "mask_labels"]


class TaskOutput(NamedTuple):
    """Logits of the Task Net's heads (``None`` for a branch the variant does not have).

    ``diagnosis`` ``(N, N_d)``, ``co_embedding`` ``(N, K)`` with ``K = L · N_d · N_q``, ``quality`` ``(N, N_q)``.
    """

    diagnosis: Tensor
    co_embedding: Tensor | None
    quality: Tensor | None


class _PooledLinear(nn.Module):
    """MKCNet-FC's branch: global average pooling (if given a map) and a linear projection."""

    def __init__(self, in_channels: int, out_features: int) -> None:
        super().__init__()
        self.projection = nn.Linear(in_channels, out_features)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.projection(x.mean(dim=(2, 3)) if x.ndim == 4 else x)
        return out


def _mlp(width: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out_features))


class TaskNet(nn.Module):
    """MKCNet's Task Net: a shared backbone, three branches, the MAB and three heads.

    ``F = backbone(x)``; ``f^d, f^ω, f^q = GAB_d(F), GAB_ω(F), GAB_q(F)``;
    ``f^{d*} = MAB(f^d, f^ω) = [f^d, g(f^ω) ⊙ f^ω]``; diagnosis logits ``MLP(f^{d*})``, co-embedding
    logits ``MLP(f^ω)`` (``K = L · N_d · N_q``, trained towards the Meta Learner's targets) and quality
    logits ``MLP(f^q)``. Each head is ``Linear(w, w) → ReLU → Linear(w, out)`` on its input width ``w``.
    The arguments switch parts off for the paper's ablations.

    Args:
        backbone: The shared encoder.
        num_diagnosis: ``N_d``.
        num_quality: ``N_q``.
        num_aux: ``K``, length of the co-embedding logits, or ``None``: no co-embedding branch.
        feature_dim: Width of the three branch features (MKCNet: 256 = half of VGG's 512).
        gab: ``"cbam"`` (:class:`~qualcl.heads.GlobalAttentionBlock`) or ``"fc"`` (MKCNet-FC).
        assist: ``"gated"`` (:class:`~qualcl.heads.MetaKnowledgeAssistanceBlock`), ``"concat"`` (MKCNet-Con)
            or ``"none"`` (w/o MAB).
        assist_from: ``"co_embedding"`` or ``"quality"`` (w/o Meta: ``f^q`` takes the place of ``f^ω``).
        quality_head: Build the quality branch.
        features: ``"map"`` (the paper: the last feature map ``(N, C, h, w)``) or ``"pooled"`` (the official code).

    Shape:
        ``(N, C_in, H, W)`` → :class:`TaskOutput`.

    Examples:
        >>> import torch
        >>> net = TaskNet(build_encoder("resnet10"), 3, 3, num_aux=45, feature_dim=64)
        >>> out = net(torch.randn(2, 3, 64, 64))
        >>> out.diagnosis.shape, out.co_embedding.shape, out.quality.shape
        (torch.Size([2, 3]), torch.Size([2, 45]), torch.Size([2, 3]))

    Reference:
        Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding" (MKCNet), CVPR 2023, §3.2.1.
    """

    def __init__(
        self,
        backbone: Encoder,
        num_diagnosis: int,
        num_quality: int,
        num_aux: int | None,
        *,
        feature_dim: int = 256,
        gab: str = "cbam",
        assist: str = "gated",
        assist_from: str = "co_embedding",
        quality_head: bool = True,
        features: str = "map",
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("gab", gab, ("cbam", "fc")),
            ("assist", assist, ("gated", "concat", "none")),
            ("assist_from", assist_from, ("co_embedding", "quality")),
            ("features", features, ("map", "pooled")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if assist != "none" and assist_from == "co_embedding" and num_aux is None:
            raise ValueError("assist from the co-embedding needs its branch (num_aux); use assist='none'")
        if assist != "none" and assist_from == "quality" and not quality_head:
            raise ValueError("assist from the quality feature needs quality_head=True")
        channels, block = backbone.num_features, GlobalAttentionBlock if gab == "cbam" else _PooledLinear
        self.backbone, self.features, self.assist, self.assist_from = backbone, features, assist, assist_from
        self.diagnosis_branch = block(channels, feature_dim)
        self.co_embedding_branch = block(channels, feature_dim) if num_aux is not None else None
        self.quality_branch = block(channels, feature_dim) if quality_head else None
        self.mab = MetaKnowledgeAssistanceBlock(feature_dim) if assist == "gated" else None
        width = feature_dim if assist == "none" else 2 * feature_dim
        self.diagnosis_head = _mlp(width, num_diagnosis)
        self.co_embedding_head = _mlp(feature_dim, num_aux) if num_aux is not None else None
        self.quality_head = _mlp(feature_dim, num_quality) if quality_head else None

    def forward_with_feature(self, x: Tensor) -> tuple[TaskOutput, Tensor]:
        """The logits of every head and the final diagnosis feature ``f^{d*}`` ``(N, w)`` (for embedding maps)."""
        shared = self.backbone.forward_features(x) if self.features == "map" else self.backbone(x)
        f_d: Tensor = self.diagnosis_branch(shared)
        f_w = self.co_embedding_branch(shared) if self.co_embedding_branch is not None else None
        f_q = self.quality_branch(shared) if self.quality_branch is not None else None
        if self.assist != "none":  # f^{d*} = MAB(f^d, helper), or the plain concatenation
            helper = f_w if self.assist_from == "co_embedding" else f_q
            assert helper is not None  # checked in __init__
            f_d = self.mab(f_d, helper) if self.mab is not None else torch.cat([f_d, helper], dim=1)
        co = self.co_embedding_head(f_w) if self.co_embedding_head is not None and f_w is not None else None
        quality = self.quality_head(f_q) if self.quality_head is not None and f_q is not None else None
        return TaskOutput(self.diagnosis_head(f_d), co, quality), f_d

    def forward(self, x: Tensor) -> TaskOutput:
        """Logits of every head for images ``x``."""
        return self.forward_with_feature(x)[0]


def _backbone(config: ModelConfig, channels: int) -> Encoder:
    """One sub-net's encoder; ``init="xavier"``: the official code's Xavier-uniform convolutions, zero bias, BN 1, 0."""
    if config.init not in ("xavier", "torchvision"):
        raise ValueError(f"model.init must be 'xavier' or 'torchvision', got {config.init!r}")
    backbone = build_encoder(config.backbone, in_chans=channels)
    for module in backbone.modules() if config.init == "xavier" else ():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return backbone


def _mask_groups(config: ModelConfig, num_diagnosis: int, num_quality: int) -> tuple[int, int, int]:
    """``(N_d', N_q', L')`` of the Meta Learner's mask: the same output length, grouped by ``mask_by``."""
    n_d, n_q, length = num_diagnosis, num_quality, config.slice_length
    groups = {"joint": (n_d, n_q, length), "quality": (1, n_q, length * n_d), "diagnosis": (n_d, 1, length * n_q)}
    if config.mask_by not in groups:
        raise ValueError(f"model.mask_by must be one of {list(groups)}, got {config.mask_by!r}")
    return groups[config.mask_by]


def mask_labels(mask_by: str, diagnosis: Tensor, quality: Tensor) -> tuple[Tensor, Tensor]:
    """The ``(diagnosis, quality)`` ids the Meta Learner's mask sees: zeros for the label not masked by."""
    if mask_by == "quality":
        return torch.zeros_like(diagnosis), quality
    if mask_by == "diagnosis":
        return diagnosis, torch.zeros_like(quality)
    return diagnosis, quality


def build_task_net(config: ModelConfig, channels: int, num_diagnosis: int, num_quality: int) -> TaskNet:
    """The Task Net of ``config`` for ``channels``-channel images."""
    backbone = _backbone(config, channels)
    num_aux = config.slice_length * num_diagnosis * num_quality if config.meta else None
    return TaskNet(
        backbone,
        num_diagnosis,
        num_quality,
        num_aux,
        feature_dim=config.feature_dim or backbone.num_features // 2,
        gab=config.gab,
        assist=config.assist,
        assist_from=config.assist_from,
        quality_head=config.quality_head,
        features=config.gab_input,
    )


def build_meta_learner(
    config: ModelConfig, channels: int, num_diagnosis: int, num_quality: int
) -> MetaLabelGenerator | None:
    """The Meta Learner (its own backbone + ``Linear(F, F) → ReLU → Linear(F, K)`` + mask), if ``config.meta``."""
    if not config.meta:
        return None
    groups_d, groups_q, length = _mask_groups(config, num_diagnosis, num_quality)
    backbone = _backbone(config, channels)
    return MetaLabelGenerator(backbone, backbone.num_features, groups_d, groups_q, length, eps=config.mask_eps)
