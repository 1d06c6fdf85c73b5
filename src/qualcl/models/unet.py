"""The U-Net contracting path as a qualcl encoder (the public FundusDR code's retrieval trunk)."""

from __future__ import annotations

from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor, nn

from qualcl.heads.unet_decoder import DoubleConv
from qualcl.models.encoder import Encoder
from qualcl.models.registry import register_encoder

__all__ = ["UNetEncoder", "unet_encoder"]

#: Base width of each U-Net encoder name.
UNET_WIDTHS = {"unet": 64, "unet_small": 16}


class UNetEncoder(Encoder):
    """U-Net's contracting path: ``DoubleConv(in, w)``, then four ``MaxPool 2 → DoubleConv`` stages.

    Channels ``w, 2w, 4w, 8w, 8w`` (``w = 64``: the public FundusDR ``MANet`` trunk with bilinear
    upsampling, 64-128-256-512-512). ``forward_pyramid`` returns the five maps (strides 1–16),
    ``forward_features`` the last one and ``forward`` its global average. Pairs with
    :class:`qualcl.heads.UNetDecoder` for reconstruction or segmentation.

    Args:
        in_chans: Input channels.
        width: Base width ``w``.

    Examples:
        >>> import torch
        >>> encoder = UNetEncoder(width=8)
        >>> [m.shape[1:] for m in encoder.forward_pyramid(torch.randn(1, 3, 32, 32))][-1], encoder.num_features
        (torch.Size([64, 2, 2]), 64)

    Reference:
        Ronneberger, Fischer and Brox, "U-Net", MICCAI 2015; FundusDR (github.com/fjssharpsword/FundusDR,
        ``nets/MANet.py``).
    """

    def __init__(self, in_chans: int = 3, width: int = 64) -> None:
        super().__init__()
        channels = (width, 2 * width, 4 * width, 8 * width, 8 * width)
        stages: list[nn.Module] = [DoubleConv(in_chans, channels[0])]
        for before, after in pairwise(channels):
            stages.append(nn.Sequential(nn.MaxPool2d(2), DoubleConv(before, after)))
        self.net = nn.Sequential(*stages)
        self.num_features = channels[-1]
        self.pyramid_channels = channels
        self.pyramid_reductions = (1, 2, 4, 8, 16)

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """The five stage maps, strides 1, 2, 4, 8, 16."""
        maps = []
        for stage in self.net:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` → ``(N, 8w, H/16, W/16)``."""
        out: Tensor = self.net(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` → ``(N, 8w)`` (global average of the last map)."""
        return F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1)

    @property
    def stem_conv(self) -> nn.Conv2d:
        """The first convolution."""
        first = self.net[0]
        assert isinstance(first, nn.Sequential)
        conv = first[0]
        assert isinstance(conv, nn.Conv2d)
        return conv


def unet_encoder(name: str, *, in_chans: int = 3) -> UNetEncoder:
    """The U-Net encoder ``name`` (``"unet"`` or ``"unet_small"``), randomly initialised."""
    if name not in UNET_WIDTHS:
        raise ValueError(f"unknown U-Net encoder {name!r}; choose one of {list(UNET_WIDTHS)}")
    return UNetEncoder(in_chans, UNET_WIDTHS[name])


# The registered names (``qualcl.models.create_encoder``); U-Nets take any image size and ignore ``image_size``.


@register_encoder(
    "unet",
    family="cnn",
    num_features=512,
    description="U-Net contracting path 64-128-256-512-512 (9.4 M; the FundusDR retrieval trunk)",
)
def _unet(*, in_chans: int = 3, image_size: int | None = None) -> UNetEncoder:
    return unet_encoder("unet", in_chans=in_chans)


@register_encoder(
    "unet_small",
    family="cnn",
    num_features=128,
    description="U-Net contracting path at 1/4 width, 16-32-64-128-128 (0.6 M)",
)
def _unet_small(*, in_chans: int = 3, image_size: int | None = None) -> UNetEncoder:
    return unet_encoder("unet_small", in_chans=in_chans)
