"""MKCNet's two sub-networks wired from qualcl heads: the Task Net and the Meta Learner."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from qualcl.heads import GlobalAttentionBlock, MetaKnowledgeAssistanceBlock, MetaLabelGenerator
from qualcl.models import Encoder, build_encoder
from qualcl.recipes.mkcnet.config import ModelConfig

__all__ = ["TaskNet", "TaskOutput", "build_meta_learner", "build_task_net", "mask_labels", "xavier_init"]


class TaskOutput(NamedTuple):
    """Logits of the Task Net's heads (``None`` for a branch the variant does not have).

    Attributes:
        diagnosis: ``(N, N_d)``.
        co_embedding: ``(N, K)`` with ``K = L · N_d · N_q``, or ``None``.
        quality: ``(N, N_q)``, or ``None``.
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
        pooled = x.mean(dim=(2, 3)) if x.ndim == 4 else x
        out: Tensor = self.projection(pooled)
        return out


def _mlp(width: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out_features))


class TaskNet(nn.Module):
    """MKCNet's Task Net: a shared backbone, three branches, the MAB and three heads.

    ``F = backbone(x)``; ``f^d, f^ω, f^q = GAB_d(F), GAB_ω(F), GAB_q(F)``;
    ``f^{d*} = MAB(f^d, f^ω) = [f^d, g(f^ω) ⊙ f^ω]``; diagnosis logits ``MLP(f^{d*})``, co-embedding
    logits ``MLP(f^ω)`` (``K = L · N_d · N_q``, trained towards the Meta Learner's targets) and quality
    logits ``MLP(f^q)``. Each head is ``Linear(w, w) → ReLU → Linear(w, out)`` on its input width ``w``.
    The ablations switch parts off: no co-embedding branch (``num_aux=None``), no quality branch,
    ``assist="concat"`` (MKCNet-Con) or ``"none"`` (w/o MAB), ``assist_from="quality"`` (w/o Meta:
    ``f^q`` takes the place of ``f^ω`` in the MAB), and ``gab="fc"`` (MKCNet-FC).

    Args:
        backbone: The shared encoder.
        num_diagnosis: ``N_d``.
        num_quality: ``N_q``.
        num_aux: ``K``, length of the co-embedding logits, or ``None`` for no co-embedding branch.
        feature_dim: Width of the three branch features (MKCNet: 256 = half of VGG's 512).
        gab: ``"cbam"`` (:class:`~qualcl.heads.GlobalAttentionBlock`) or ``"fc"``.
        assist: ``"gated"`` (:class:`~qualcl.heads.MetaKnowledgeAssistanceBlock`), ``"concat"`` or ``"none"``.
        assist_from: ``"co_embedding"`` or ``"quality"``.
        quality_head: Build the quality branch.
        features: ``"map"`` (the paper: the branches see the last feature map ``(N, C, h, w)``) or
            ``"pooled"`` (the official code: globally pooled ``(N, C)`` features).

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
        if gab not in ("cbam", "fc"):
            raise ValueError(f"gab must be 'cbam' or 'fc', got {gab!r}")
        if assist not in ("gated", "concat", "none"):
            raise ValueError(f"assist must be 'gated', 'concat' or 'none', got {assist!r}")
        if assist_from not in ("co_embedding", "quality"):
            raise ValueError(f"assist_from must be 'co_embedding' or 'quality', got {assist_from!r}")
        if assist != "none" and assist_from == "co_embedding" and num_aux is None:
            raise ValueError("assist from the co-embedding needs its branch (num_aux); use assist='none'")
        if assist != "none" and assist_from == "quality" and not quality_head:
            raise ValueError("assist from the quality feature needs quality_head=True")
        if features not in ("map", "pooled"):
            raise ValueError(f"features must be 'map' or 'pooled', got {features!r}")
        channels = backbone.num_features
        self.features = features

        def branch() -> nn.Module:
            if gab == "cbam":
                return GlobalAttentionBlock(channels, feature_dim)
            return _PooledLinear(channels, feature_dim)

        self.backbone = backbone
        self.assist = assist
        self.assist_from = assist_from
        self.diagnosis_branch = branch()
        self.co_embedding_branch = branch() if num_aux is not None else None
        self.quality_branch = branch() if quality_head else None
        self.mab = MetaKnowledgeAssistanceBlock(feature_dim) if assist == "gated" else None
        width = feature_dim if assist == "none" else 2 * feature_dim
        self.diagnosis_head = _mlp(width, num_diagnosis)
        self.co_embedding_head = _mlp(feature_dim, num_aux) if num_aux is not None else None
        self.quality_head = _mlp(feature_dim, num_quality) if quality_head else None

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(f^{d*}, f^ω, f^q)`` for images ``x``."""
        shared = self.backbone.forward_features(x) if self.features == "map" else self.backbone(x)
        f_d: Tensor = self.diagnosis_branch(shared)
        f_w = self.co_embedding_branch(shared) if self.co_embedding_branch is not None else None
        f_q = self.quality_branch(shared) if self.quality_branch is not None else None
        if self.assist == "none":
            return f_d, f_w, f_q
        helper = f_w if self.assist_from == "co_embedding" else f_q
        assert helper is not None  # checked in __init__
        joined = self.mab(f_d, helper) if self.mab is not None else torch.cat([f_d, helper], dim=1)
        return joined, f_w, f_q

    def forward_with_feature(self, x: Tensor) -> tuple[TaskOutput, Tensor]:
        """The logits of every head and the final diagnosis feature ``f^{d*}`` ``(N, w)`` (for embedding maps)."""
        f_ds, f_w, f_q = self._features(x)
        co = self.co_embedding_head(f_w) if self.co_embedding_head is not None and f_w is not None else None
        quality = self.quality_head(f_q) if self.quality_head is not None and f_q is not None else None
        return TaskOutput(self.diagnosis_head(f_ds), co, quality), f_ds

    def forward(self, x: Tensor) -> TaskOutput:
        """Logits of every head for images ``x``."""
        return self.forward_with_feature(x)[0]


def xavier_init(backbone: nn.Module) -> None:
    """The official code's backbone initialisation: Xavier-uniform convolutions, zero bias, BN γ = 1, β = 0."""
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _backbone(config: ModelConfig, channels: int) -> Encoder:
    if config.init not in ("xavier", "torchvision"):
        raise ValueError(f"model.init must be 'xavier' or 'torchvision', got {config.init!r}")
    backbone = build_encoder(config.backbone, in_chans=channels)
    if config.init == "xavier":
        xavier_init(backbone)
    return backbone


def _mask_groups(config: ModelConfig, num_diagnosis: int, num_quality: int) -> tuple[int, int, int]:
    """``(N_d', N_q', L')`` of the Meta Learner's mask: the same output length, grouped by ``mask_by``."""
    length = config.slice_length
    if config.mask_by == "joint":
        return num_diagnosis, num_quality, length
    if config.mask_by == "quality":
        return 1, num_quality, length * num_diagnosis
    if config.mask_by == "diagnosis":
        return num_diagnosis, 1, length * num_quality
    raise ValueError(f"model.mask_by must be 'joint', 'quality' or 'diagnosis', got {config.mask_by!r}")


def mask_labels(mask_by: str, diagnosis: Tensor, quality: Tensor) -> tuple[Tensor, Tensor]:
    """The ``(diagnosis, quality)`` ids the Meta Learner's mask sees: zeros for the label not masked by."""
    if mask_by == "quality":
        return torch.zeros_like(diagnosis), quality
    if mask_by == "diagnosis":
        return diagnosis, torch.zeros_like(quality)
    return diagnosis, quality


def build_task_net(config: ModelConfig, channels: int, num_diagnosis: int, num_quality: int) -> TaskNet:
    """The Task Net of ``config`` for ``channels``-channel images."""
    if config.gab_input not in ("map", "pooled"):
        raise ValueError(f"model.gab_input must be 'map' or 'pooled', got {config.gab_input!r}")
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
