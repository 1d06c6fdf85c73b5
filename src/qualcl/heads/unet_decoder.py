"""U-Net decoder over an encoder's feature pyramid: upsample ×2, concatenate the skip, double convolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl._validation import check_choice, check_feature_map, check_int

__all__ = ["DoubleConv", "UNetDecoder"]


class DoubleConv(nn.Sequential):
    """``[conv 3×3 (padding 1) → BatchNorm → ReLU] × 2``: U-Net's basic block (``mid`` channels in between)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        mid = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNetDecoder(nn.Module):
    r"""The expanding path of a U-Net over any :class:`~qualcl.models.Encoder` pyramid.

    Starting from the coarsest map, each step upsamples by 2 (``"nearest"``, as the
    local-discrimination code, or ``"bilinear"`` with ``align_corners=True``, as the public
    FundusDR code), pads to the skip's size when it is odd, concatenates ``[skip, up]`` and applies
    a :class:`DoubleConv`. Step ``l`` (skip ``l``, fine to coarse ``0 … L−1``) outputs
    ``decoder_channels[l]`` channels, by default the channels of the next finer skip (the last step
    keeps the finest skip's), with ``in // 2`` middle channels in bilinear mode — so
    ``UNetDecoder((64, 128, 256, 512, 512), out_channels=3, upsample="bilinear",
    final_activation="sigmoid")`` is FundusDR's ``MANet`` decoder (``up1 … up4`` + ``outc``).
    The output has the resolution of the finest pyramid map (a ResNet's is half the input).

    The local-discrimination decoder (``my_models.py::decoder``) halves the concatenated channels
    in the middle of each block and ends on the bare concatenation ``[skip_0, up]`` (its heads
    convolve that): ``UNetDecoder((16, 32, 64, 128, 128), decoder_channels=(16, 32, 64),
    middle="half", last="concat")`` over ``vgg16_bn_tiny`` is that decoder, 32 channels out.

    Args:
        encoder_channels: Channels of the pyramid maps, fine to coarse (``Encoder.pyramid_channels``).
        decoder_channels: Output channels of each step, fine to coarse (``len(encoder_channels) − 1``
            entries; one fewer with ``last="concat"``, whose finest step has no block).
        out_channels: Channels of a final 1×1 convolution (``None``: return the last step's map).
        upsample: ``"nearest"`` or ``"bilinear"``.
        final_activation: ``None`` or ``"sigmoid"`` after the final convolution.
        middle: Middle channels of each block: ``"output"`` (its output channels) or ``"half"``
            (half its input channels); default ``"half"`` with bilinear upsampling, else ``"output"``.
        last: ``"block"`` (the finest step is a block like the others) or ``"concat"`` (it only
            upsamples and concatenates the finest skip).

    Shape:
        - Input: the list of pyramid maps ``(N, C_l, H_l, W_l)``, fine to coarse (the coarsest may
          be replaced by a head's output of the same shape).
        - Output: ``(N, out_channels, H_0, W_0)`` (``(N, decoder.channels, H_0, W_0)`` without ``out_channels``).

    Examples:
        >>> import torch
        >>> from qualcl.models import build_encoder
        >>> encoder = build_encoder("vgg16_bn_tiny")
        >>> decoder = UNetDecoder(encoder.pyramid_channels, out_channels=1)
        >>> decoder(encoder.forward_pyramid(torch.randn(2, 3, 32, 32))).shape
        torch.Size([2, 1, 32, 32])

    Reference:
        Ronneberger, Fischer and Brox, "U-Net", MICCAI 2015; FundusDR (github.com/fjssharpsword/FundusDR,
        ``nets/MANet.py``); Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] | None = None,
        out_channels: int | None = None,
        upsample: str = "nearest",
        final_activation: str | None = None,
        middle: str | None = None,
        last: str = "block",
    ) -> None:
        super().__init__()
        channels = [check_int("encoder_channels", c) for c in encoder_channels]
        if len(channels) < 2:
            raise ValueError(f"encoder_channels needs at least two maps, got {list(encoder_channels)}")
        self.upsample = check_choice("upsample", upsample, ("nearest", "bilinear"))
        self.middle = check_choice(
            "middle", middle or ("half" if self.upsample == "bilinear" else "output"), ("output", "half")
        )
        self.last = check_choice("last", last, ("block", "concat"))
        levels = len(channels) - 1
        first = 1 if self.last == "concat" else 0  # the finest level with a block
        default = [channels[0], *channels[: levels - 1]][first:]  # each step ends at the next finer skip's width
        widths = list(default if decoder_channels is None else decoder_channels)
        if len(widths) != levels - first:
            raise ValueError(
                f"decoder_channels needs {levels - first} entries (one per skip{' but the finest' if first else ''}), "
                f"got {len(widths)}"
            )
        self.encoder_channels = tuple(channels)
        self.decoder_channels = tuple(check_int("decoder_channels", c) for c in widths)
        self.final_activation = (
            None if final_activation is None else check_choice("final_activation", final_activation, ("sigmoid",))
        )
        blocks = []
        below = channels[-1]
        for level in reversed(range(first, levels)):
            total = channels[level] + below
            mid = total // 2 if self.middle == "half" else None
            blocks.append(DoubleConv(total, self.decoder_channels[level - first], mid))
            below = self.decoder_channels[level - first]
        if first:
            below += channels[0]
        self.blocks = nn.ModuleList(blocks)  # coarse to fine
        #: Channels of the decoded map (before the optional final convolution).
        self.channels = below
        self.head = None if out_channels is None else nn.Conv2d(below, check_int("out_channels", out_channels), 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Decode a fine-to-coarse pyramid to the finest map's resolution."""
        if len(features) != len(self.encoder_channels):
            raise ValueError(f"expected {len(self.encoder_channels)} pyramid maps, got {len(features)}")
        for level, (fmap, c) in enumerate(zip(features, self.encoder_channels, strict=True)):
            check_feature_map(f"features[{level}]", fmap, channels=c)
        x = features[-1]
        blocks: list[nn.Module | None] = [*self.blocks, *([None] if self.last == "concat" else [])]
        for block, skip in zip(blocks, reversed(features[:-1]), strict=True):
            if self.upsample == "bilinear":
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
            else:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
            if dy or dx:
                x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            x = torch.cat([skip, x], dim=1)
            if block is not None:
                x = block(x)
        if self.head is not None:
            x = self.head(x)
            if self.final_activation == "sigmoid":
                x = torch.sigmoid(x)
        return x
