"""Convolutions on tiny feature maps as unfold + matmul: the same function, much faster backward on CPUs."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UnfoldConv2d", "unfold_small_convs"]


class UnfoldConv2d(nn.Conv2d):
    """A ``Conv2d`` that computes inputs of at most ``max_pixels`` pixels on the CPU as unfold + matmul.

    oneDNN's weight-gradient kernel is pathological on tiny maps with many channels: a ResNet's
    last 3 × 3, 512 → 512 convolution on the 1 × 1 maps of 32-px patches takes ~200 ms for 128
    patches, 15× its forward (measured on 2 cores; ``benchmarks/step_overhead.py``). As ``F.unfold``
    followed by one matrix product, forward and backward are plain GEMMs. The function is the same
    (only the rounding differs); other inputs, other devices, groups and non-zero padding modes go
    through ``nn.Conv2d``. The parameters and state dict are ``nn.Conv2d``'s.

    Attributes:
        max_pixels: Largest ``H × W`` of an input computed by unfolding.
    """

    max_pixels: int = 9

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        h, w = input.shape[-2:]
        if (
            input.device.type != "cpu"
            or h * w > self.max_pixels
            or self.groups != 1
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
        ):
            native: Tensor = super()._conv_forward(input, weight, bias)
            return native
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        columns = F.unfold(input, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
        out = (weight.reshape(weight.shape[0], -1) @ columns).reshape(input.shape[0], -1, out_h, out_w)
        return out if bias is None else out + bias.view(1, -1, 1, 1)


def unfold_small_convs(module: nn.Module, max_pixels: int = 9) -> int:
    """Turn every plain ``nn.Conv2d`` of ``module`` into an :class:`UnfoldConv2d` (in place); returns how many.

    Examples:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))
        >>> want = net(x := torch.randn(2, 4, 1, 1))
        >>> unfold_small_convs(net), torch.allclose(net(x), want, atol=1e-6)
        (1, True)
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    count = 0
    for child in module.modules():
        if type(child) is nn.Conv2d or isinstance(child, UnfoldConv2d):
            child.__class__ = UnfoldConv2d
            setattr(child, "max_pixels", max_pixels)  # noqa: B010 (mypy sees an nn.Module attribute otherwise)
            count += 1
    return count
