"""MKCNet's global attention block (GAB): CBAM, global average pooling and a linear projection."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from qualcl._validation import check_feature_map, check_int
from qualcl.heads.cbam import CBAM

__all__ = ["GlobalAttentionBlock"]


class GlobalAttentionBlock(nn.Module):
    """``CBAM(C) → AdaptiveAvgPool(1) → Flatten → Linear(C, out_features)``: one task branch of MKCNet.

    MKCNet's Task Net puts three GABs on the shared backbone feature ``F_θ``; they give the diagnosis
    feature ``f^d``, the co-embedding feature ``f^ω`` and the quality feature ``f^q`` (each 256-d from a
    512-channel VGG-16 map in the paper's setting).

    A 2-d input ``(N, C)`` is read as ``(N, C, 1, 1)``: that is what the official code does (its
    backbone pools globally before the GABs), which makes the spatial gate a per-sample scalar. Feed
    the un-pooled ``(N, C, H, W)`` map to get the paper's channel + spatial attention.

    Args:
        in_channels: Channels ``C`` of the backbone feature map.
        out_features: Width of the projected feature (``C // 2`` in MKCNet).
        reduction: CBAM channel-MLP reduction ratio (16).
        pool_types: CBAM channel-gate pools (``("avg", "max")``).
        spatial: Whether the CBAM applies its spatial gate (MKCNet: yes).
        kernel_size: Spatial-gate convolution size (7).

    Shape:
        - Input ``(N, C, H, W)`` or ``(N, C)``; output ``(N, out_features)``.

    Examples:
        >>> import torch
        >>> gab = GlobalAttentionBlock(64, 32)
        >>> gab(torch.randn(4, 64, 8, 8)).shape
        torch.Size([4, 32])

    Reference:
        Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding" (MKCNet), CVPR 2023,
        §3.2.1; Woo et al., "CBAM", ECCV 2018.
    """

    def __init__(
        self,
        in_channels: int,
        out_features: int,
        *,
        reduction: int = 16,
        pool_types: Sequence[str] = ("avg", "max"),
        spatial: bool = True,
        kernel_size: int = 7,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("out_features", out_features)
        self.attention = CBAM(
            in_channels, reduction, pool_types, spatial=spatial, kernel_size=kernel_size, bn_momentum=0.01
        )
        self.projection = nn.Linear(in_channels, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Attend, pool and project ``x`` ``(N, C, H, W)`` (or ``(N, C)``) to ``(N, out_features)``."""
        if isinstance(x, Tensor) and x.ndim == 2:
            x = x[:, :, None, None]
        check_feature_map("x", x, self.attention.channels)
        pooled = self.attention(x).mean(dim=(2, 3))
        out: Tensor = self.projection(pooled)
        return out
