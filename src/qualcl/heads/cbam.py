"""CBAM: a channel gate followed by a spatial gate (Woo et al., ECCV 2018), as used by MKCNet."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qualcl._validation import (
    check_batch_statistics,
    check_feature_map,
    check_int,
    check_pool_types,
    check_probability,
)

__all__ = ["CBAM", "ChannelGate", "SpatialGate"]


class ChannelGate(nn.Module):
    r"""CBAM channel attention: ``x * sigmoid(sum_pool MLP(pool(x)))`` with a shared MLP.

    .. math::
        g = \sigma\Big(\sum_{p \in \text{pool\_types}} \mathrm{MLP}(p(x))\Big), \qquad
        \mathrm{MLP} = \mathrm{Linear}(C, C/r) \to \mathrm{ReLU} \to \mathrm{Linear}(C/r, C)

    where ``p`` is global average or global max pooling over ``H × W``. The hidden width is
    ``max(1, C // reduction)`` (the reference code uses ``C // reduction`` and fails for ``C < r``).
    On ``1 × 1`` maps average and max pooling coincide, so with both pools the gate is
    ``sigmoid(2 · MLP(x))`` — MKCNet's MAB applies it that way to a 256-d vector.

    Args:
        channels: Number of channels ``C``.
        reduction: MLP reduction ratio ``r`` (16 in CBAM and MKCNet).
        pool_types: Non-empty subset of ``("avg", "max")``; CBAM and MKCNet use both.

    Shape:
        - Input ``(N, C, H, W)``; output ``(N, C, H, W)`` (same dtype).
        - :meth:`gate`: ``(N, C)`` values in ``[0, 1]``.

    Examples:
        >>> import torch
        >>> gate = ChannelGate(32, reduction=16)
        >>> x = torch.randn(2, 32, 5, 5)
        >>> gate(x).shape, bool(((gate.gate(x) > 0) & (gate.gate(x) < 1)).all())
        (torch.Size([2, 32, 5, 5]), True)

    Reference:
        Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018; MKCNet (Che et al.,
        "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding", CVPR 2023), GAB and MAB.
    """

    def __init__(self, channels: int, reduction: int = 16, pool_types: Sequence[str] = ("avg", "max")):
        super().__init__()
        self.channels = check_int("channels", channels)
        self.reduction = check_int("reduction", reduction)
        self.pool_types = check_pool_types(pool_types)
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def gate(self, x: Tensor) -> Tensor:
        """Return the channel gate ``(N, C)`` in ``[0, 1]`` for ``x`` of shape ``(N, C, H, W)``."""
        check_feature_map("x", x, self.channels)
        raw: Tensor | None = None
        for pool in self.pool_types:
            pooled = x.mean(dim=(2, 3)) if pool == "avg" else x.amax(dim=(2, 3))
            out: Tensor = self.mlp(pooled)
            raw = out if raw is None else raw + out
        assert raw is not None  # pool_types is non-empty
        return torch.sigmoid(raw)

    def forward(self, x: Tensor) -> Tensor:
        """Multiply ``x`` ``(N, C, H, W)`` by its channel gate."""
        return x * self.gate(x)[:, :, None, None]


class SpatialGate(nn.Module):
    r"""CBAM spatial attention: ``x * sigmoid(BN(conv_k([max_c x, mean_c x])))``.

    The channel-wise max and mean maps are stacked (in that order, as in the reference code),
    convolved ``2 → 1`` with a ``k × k`` kernel (no bias, padding ``k // 2``), batch-normalised
    (MKCNet: momentum 0.01) and squashed with a sigmoid.

    Args:
        kernel_size: Odd convolution size ``k`` (7 in CBAM and MKCNet).
        batch_norm: Apply the ``BatchNorm2d(1)`` after the convolution (reference: yes).
        bn_momentum: Momentum of that BatchNorm (MKCNet's ``BasicConv`` uses 0.01).

    Shape:
        - Input ``(N, C, H, W)``; output ``(N, C, H, W)``.
        - :meth:`gate`: ``(N, 1, H, W)`` values in ``[0, 1]``.

    Note:
        On ``1 × 1`` maps (MKCNet applies its GABs after global pooling) the gate is one scalar per
        sample, normalised across the batch by the BatchNorm; in training mode that needs ``N >= 2``.

    Examples:
        >>> import torch
        >>> SpatialGate()(torch.randn(2, 8, 6, 6)).shape
        torch.Size([2, 8, 6, 6])

    Reference:
        Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018; MKCNet, CVPR 2023.
    """

    def __init__(self, kernel_size: int = 7, *, batch_norm: bool = True, bn_momentum: float = 0.01) -> None:
        super().__init__()
        check_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so that the map keeps its size, got {kernel_size}")
        bn_momentum = check_probability("bn_momentum", bn_momentum)
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(1, momentum=bn_momentum) if batch_norm else None

    def gate(self, x: Tensor) -> Tensor:
        """Return the spatial gate ``(N, 1, H, W)`` in ``[0, 1]`` for ``x`` of shape ``(N, C, H, W)``."""
        check_feature_map("x", x)
        check_batch_statistics("x", x, self)
        compressed = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        out: Tensor = self.conv(compressed)
        if self.bn is not None:
            out = self.bn(out)
        return torch.sigmoid(out)

    def forward(self, x: Tensor) -> Tensor:
        """Multiply ``x`` ``(N, C, H, W)`` by its spatial gate (broadcast over channels)."""
        return x * self.gate(x)


class CBAM(nn.Module):
    """Convolutional Block Attention Module: :class:`ChannelGate` then (optionally) :class:`SpatialGate`.

    ``CBAM(x) = S(C(x))`` with ``C(x) = x ⊙ g_c(x)`` and ``S(y) = y ⊙ g_s(y)``; the spatial gate sees the
    channel-gated map. ``spatial=False`` gives MKCNet's MAB gate (``CBAM(256, no_spatial=True)``).

    Args:
        channels: Number of channels ``C``.
        reduction: Channel-MLP reduction ratio (16).
        pool_types: Channel-gate pools, subset of ``("avg", "max")`` (both).
        spatial: Whether to apply the spatial gate.
        kernel_size: Spatial-gate convolution size (7).
        bn_momentum: Spatial-gate BatchNorm momentum (0.01 as in MKCNet).

    Shape:
        - Input ``(N, C, H, W)``; output ``(N, C, H, W)``.
        - :meth:`gates`: ``((N, C), (N, 1, H, W) or None)``.

    Examples:
        >>> import torch
        >>> cbam = CBAM(64)
        >>> cbam(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])

    Reference:
        Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018; MKCNet (Che et al.,
        CVPR 2023) builds its global attention blocks and its MAB from it.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        pool_types: Sequence[str] = ("avg", "max"),
        *,
        spatial: bool = True,
        kernel_size: int = 7,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.channel_gate = ChannelGate(channels, reduction, pool_types)
        self.spatial_gate: SpatialGate | None = None
        if spatial:
            self.spatial_gate = SpatialGate(kernel_size, bn_momentum=bn_momentum)

    @property
    def channels(self) -> int:
        """Number of input channels ``C``."""
        return self.channel_gate.channels

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return ``(channel_gate (N, C), spatial_gate (N, 1, H, W) or None)`` for ``x`` ``(N, C, H, W)``."""
        channel = self.channel_gate.gate(x)
        if self.spatial_gate is None:
            return channel, None
        return channel, self.spatial_gate.gate(x * channel[:, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        """Apply the channel gate, then the spatial gate, to ``x`` ``(N, C, H, W)``."""
        out: Tensor = self.channel_gate(x)
        if self.spatial_gate is not None:
            out = self.spatial_gate(out)
        return out
