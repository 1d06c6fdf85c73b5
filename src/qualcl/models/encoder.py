"""The one contract every qualcl encoder follows: pooled features, feature maps or tokens, a pyramid."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

__all__ = ["Encoder"]


class Encoder(nn.Module, ABC):
    """An image encoder with one interface for CNNs and ViTs.

    Every encoder of :func:`qualcl.models.build_encoder` implements:

    * ``forward(x)`` → ``(N, C)`` pooled features (global average pooling for CNNs, the class
      token for ViTs), ``C = num_features``;
    * ``forward_features(x)`` → ``(N, C, h, w)`` feature map for CNNs, ``(N, 1 + L, D)`` tokens
      (class token first, after the final norm) for ViTs;
    * ``forward_pyramid(x)`` → list of ``(N, C_i, h_i, w_i)`` maps from fine to coarse, for dense
      heads (U-Nets, pixel embeddings); ``pyramid_channels`` and ``pyramid_reductions`` describe them.

    Attributes:
        num_features: Width ``C`` of the pooled features.
        pyramid_channels: Channels of each :meth:`forward_pyramid` map.
        pyramid_reductions: Down-sampling factor of each map relative to the input.
        is_vit: Whether the encoder is a vision transformer (tokens, ``forward_masked``).
    """

    num_features: int
    pyramid_channels: tuple[int, ...]
    pyramid_reductions: tuple[int, ...]
    is_vit: bool = False

    @abstractmethod
    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` → ``(N, C, h, w)`` map (CNN) or ``(N, 1 + L, D)`` tokens (ViT)."""

    @abstractmethod
    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """``(N, C_in, H, W)`` → maps from fine to coarse (``pyramid_channels`` / ``pyramid_reductions``)."""

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` → ``(N, num_features)`` pooled features."""
