"""Convolutional encoders on torchvision's ResNet and VGG, with the :class:`~qualcl.models.Encoder` contract."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from qualcl.models.encoder import Encoder
from qualcl.models.registry import register_encoder

__all__ = ["VGG16_BN_TINY_CFG", "ResNetEncoder", "VGGEncoder", "resnet_encoder", "vgg_encoder"]

#: ``vgg16_bn_tiny``, the encoder of "Unsupervised Local Discrimination for Medical Images" (Chen et
#: al., TPAMI 2023): VGG-16's layout with 16-16 | 32-32 | 64×3 | 128×3 | 128×3 channels.
VGG16_BN_TINY_CFG: tuple[int | str, ...] = (
    *(16, 16, "M"),
    *(32, 32, "M"),
    *(64, 64, 64, "M"),
    *(128, 128, 128, "M"),
    *(128, 128, 128, "M"),
)

_RESNET_LAYOUTS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet10": (BasicBlock, [1, 1, 1, 1]),
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}

# The Sequential that ``recipes.backbones.Backbone`` (qualcl <= 0.1 run folders) kept for un-pooled ResNets.
_LEGACY_RESNET_SEQUENTIAL = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def _remap_keys(state_dict: dict[str, Any], prefix: str, rename: Callable[[str], str]) -> None:
    """Rename, in place, the keys under ``prefix + "features."`` with ``rename(rest)`` (legacy layouts)."""
    old = prefix + "features."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "net." + rename(key[len(old) :])] = state_dict.pop(key)


def _legacy_resnet_key(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_LEGACY_RESNET_SEQUENTIAL[head]}.{tail}" if head in _LEGACY_RESNET_SEQUENTIAL else rest


def _legacy_vgg_key(rest: str) -> str:
    parts = rest.split(".")
    if len(parts) >= 3 and parts[0] == "0" and parts[1].isdigit():  # Sequential(features, AdaptiveAvgPool2d)
        parts = parts[1:]
    return "features." + ".".join(parts)


def _stage_width(layer: nn.Module) -> int:
    block = list(layer.children())[-1]
    conv = block.conv3 if isinstance(block, Bottleneck) else block.conv2
    assert isinstance(conv, nn.Conv2d)
    return int(conv.out_channels)


def _pool(feature_map: Tensor) -> Tensor:
    return F.adaptive_avg_pool2d(feature_map, 1).flatten(1)


class ResNetEncoder(Encoder):
    """A torchvision ResNet without its classifier.

    ``forward_features`` is the ``layer4`` map (stride 32); ``forward`` its global average;
    ``forward_pyramid`` the stem (after ``relu``, stride 2) and the four stages (strides 4–32), the
    levels of timm's ``features_only``. The torchvision model is kept whole as :attr:`net` (its
    ``fc`` replaced by ``Identity``), so torchvision state dicts load into it unchanged.

    Args:
        net: The ResNet.

    Examples:
        >>> import torch
        >>> encoder = resnet_encoder("resnet10")
        >>> encoder(torch.randn(2, 3, 64, 64)).shape, encoder.forward_features(torch.randn(2, 3, 64, 64)).shape
        (torch.Size([2, 512]), torch.Size([2, 512, 2, 2]))
        >>> [m.shape[1] for m in encoder.forward_pyramid(torch.randn(1, 3, 64, 64))]
        [64, 64, 128, 256, 512]

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """

    def __init__(self, net: ResNet) -> None:
        super().__init__()
        self.num_features = int(net.fc.in_features)
        net.fc = nn.Identity()  # type: ignore[assignment]
        self.net = net
        self.pyramid_channels = (
            net.conv1.out_channels,
            *(_stage_width(getattr(net, f"layer{i}")) for i in range(1, 5)),
        )
        self.pyramid_reductions = (2, 4, 8, 16, 32)
        self.register_load_state_dict_pre_hook(self._load_legacy)  # type: ignore[no-untyped-call]

    @staticmethod
    def _load_legacy(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        _remap_keys(state_dict, prefix, _legacy_resnet_key)

    def _stem(self, x: Tensor) -> Tensor:
        net = self.net
        out: Tensor = net.relu(net.bn1(net.conv1(x)))
        return out

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """Stem and stage maps, strides 2, 4, 8, 16, 32."""
        net = self.net
        maps = [self._stem(x)]
        out = net.maxpool(maps[0])
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            out = layer(out)
            maps.append(out)
        return maps

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` → ``(N, num_features, H/32, W/32)``."""
        net = self.net
        out: Tensor = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(self._stem(x))))))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` → ``(N, num_features)`` (torchvision's own average pool and flatten)."""
        out: Tensor = self.net(x)
        return out

    @property
    def stem_conv(self) -> nn.Conv2d:
        """The first convolution (what a different number of input channels replaces)."""
        conv = self.net.conv1
        assert isinstance(conv, nn.Conv2d)
        return conv


class _VGGTrunk(nn.Module):
    """Holds a VGG ``features`` Sequential under the attribute name torchvision uses."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features


class VGGEncoder(Encoder):
    """A VGG convolution trunk (conv 3×3 + BatchNorm + ReLU stages, each closed by a 2×2 max-pool).

    ``forward_features`` is the trunk's output after its last pool (stride 32), ``forward`` its
    global average, and ``forward_pyramid`` the five *pre-pool* maps (strides 1, 2, 4, 8, 16), the
    skips of a U-Net decoder as in the local-discrimination paper's code.

    Args:
        trunk: A module with a ``features`` :class:`~torch.nn.Sequential` (torchvision's ``VGG`` or
            a bare trunk).

    Examples:
        >>> import torch
        >>> encoder = vgg_encoder("vgg16_bn_tiny")
        >>> [tuple(m.shape[1:]) for m in encoder.forward_pyramid(torch.randn(1, 3, 32, 32))]
        [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4), (128, 2, 2)]
        >>> encoder(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 128])

    Reference:
        Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
        Recognition", ICLR 2015; Chen et al., "Unsupervised Local Discrimination for Medical
        Images", TPAMI 2023 (``vgg16_bn_tiny``).
    """

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        features = trunk.features
        if not isinstance(features, nn.Sequential):
            raise TypeError(f"trunk.features must be an nn.Sequential, got {type(features).__name__}")
        if isinstance(trunk, models.VGG):
            trunk.classifier = nn.Identity()  # type: ignore[assignment]
        self.net = trunk
        convs = [m for m in features if isinstance(m, nn.Conv2d)]
        self._pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        channels: list[int] = []
        for pool in self._pools:
            before = [m for m in list(features)[:pool] if isinstance(m, nn.Conv2d)]
            channels.append(int(before[-1].out_channels))
        self.num_features = int(convs[-1].out_channels)
        self.pyramid_channels = tuple(channels)
        self.pyramid_reductions = tuple(2**i for i in range(len(channels)))
        self.register_load_state_dict_pre_hook(self._load_legacy)  # type: ignore[no-untyped-call]

    @staticmethod
    def _load_legacy(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        _remap_keys(state_dict, prefix, _legacy_vgg_key)

    @property
    def trunk(self) -> nn.Sequential:
        """The conv/BN/ReLU/pool Sequential (torchvision's ``features``)."""
        features = self.net.features
        assert isinstance(features, nn.Sequential)
        return features

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """The map before each max-pool, strides 1, 2, 4, 8, 16."""
        maps = []
        out = x
        for index, layer in enumerate(self.trunk):
            if index in self._pools:
                maps.append(out)
            out = layer(out)
        return maps

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` → ``(N, num_features, H/32, W/32)``."""
        out: Tensor = self.trunk(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` → ``(N, num_features)``."""
        return _pool(self.forward_features(x))

    @property
    def stem_conv(self) -> nn.Conv2d:
        """The first convolution."""
        first = self.trunk[0]
        assert isinstance(first, nn.Conv2d)
        return first


def _vgg_layers(cfg: Sequence[int | str], in_chans: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_chans
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            width = int(item)
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
    trunk = nn.Sequential(*layers)
    for module in trunk.modules():  # torchvision VGG's (and the paper's code's) initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return trunk


class _NarrowResNet(ResNet):  # type: ignore[misc]
    """torchvision's ResNet with the stem and every stage ``1 / divisor`` as wide (same layout and init)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], divisor: int) -> None:
        self.divisor = divisor  # read by _make_layer while ResNet.__init__ builds the stages
        super().__init__(block, layers)
        width = 64 // divisor
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as ResNet's own init
        self.fc = nn.Linear(512 * block.expansion // divisor, 1000)

    def _make_layer(self, block: Any, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        if planes == 64:  # the first stage: its input is the narrowed stem
            self.inplanes = 64 // self.divisor
        layer: nn.Sequential = super()._make_layer(block, planes // self.divisor, blocks, stride, dilate)
        return layer


def resnet_encoder(name: str, *, in_chans: int = 3) -> ResNetEncoder:
    """A randomly initialised ResNet encoder: ``resnet10`` (one basic block per stage), 18, 34 or 50.

    ``resnet10_tiny`` is ``resnet10`` at a quarter of the width (16–128 channels: quick tests and
    small smoke runs). With ``in_chans != 3`` the first convolution is replaced by a new one
    (default PyTorch init).
    """
    if name not in _RESNET_LAYOUTS and name != "resnet10_tiny":
        raise ValueError(f"unknown ResNet {name!r}; choose one of {sorted([*_RESNET_LAYOUTS, 'resnet10_tiny'])}")
    net = ResNet(*_RESNET_LAYOUTS[name]) if name != "resnet10_tiny" else _NarrowResNet(BasicBlock, [1, 1, 1, 1], 4)
    if in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, net.conv1.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    return ResNetEncoder(net)


def vgg_encoder(name: str, *, in_chans: int = 3) -> VGGEncoder:
    """A randomly initialised ``vgg16_bn`` (torchvision), ``vgg16_bn_tiny`` or ``vgg16_bn_micro`` encoder.

    ``vgg16_bn_micro`` is ``vgg16_bn_tiny`` at half its width (quick tests and small smoke runs).
    With ``in_chans != 3``, ``vgg16_bn``'s first convolution is replaced by a new one (default
    PyTorch init); the two small trunks are built for ``in_chans`` directly.
    """
    if name == "vgg16_bn":
        net = models.vgg16_bn(weights=None)
        if in_chans != 3:
            net.features[0] = nn.Conv2d(in_chans, 64, 3, padding=1)
        return VGGEncoder(net)
    if name in ("vgg16_bn_tiny", "vgg16_bn_micro"):
        divisor = 1 if name == "vgg16_bn_tiny" else 2
        cfg = [c if c == "M" else int(c) // divisor for c in VGG16_BN_TINY_CFG]
        return VGGEncoder(_VGGTrunk(_vgg_layers(cfg, in_chans)))
    raise ValueError(f"unknown VGG {name!r}; choose 'vgg16_bn', 'vgg16_bn_tiny' or 'vgg16_bn_micro'")


# The registered names (``qualcl.models.create_encoder``); CNNs take any image size and ignore ``image_size``.


@register_encoder(
    "resnet10",
    family="cnn",
    num_features=512,
    description="ResNet with one basic block per stage (4.9 M parameters; qualcl's CPU default)",
)
def _resnet10(*, in_chans: int = 3, image_size: int | None = None) -> ResNetEncoder:
    return resnet_encoder("resnet10", in_chans=in_chans)


@register_encoder(
    "resnet10_tiny", family="cnn", num_features=128, description="ResNet-10 at 1/4 width (0.3 M; smoke runs, tests)"
)
def _resnet10_tiny(*, in_chans: int = 3, image_size: int | None = None) -> ResNetEncoder:
    return resnet_encoder("resnet10_tiny", in_chans=in_chans)


@register_encoder("resnet18", family="cnn", num_features=512, description="torchvision ResNet-18 (11.2 M)")
def _resnet18(*, in_chans: int = 3, image_size: int | None = None) -> ResNetEncoder:
    return resnet_encoder("resnet18", in_chans=in_chans)


@register_encoder("resnet34", family="cnn", num_features=512, description="torchvision ResNet-34 (21.3 M)")
def _resnet34(*, in_chans: int = 3, image_size: int | None = None) -> ResNetEncoder:
    return resnet_encoder("resnet34", in_chans=in_chans)


@register_encoder(
    "resnet50", family="cnn", num_features=2048, description="torchvision ResNet-50 (23.5 M; CoMCL's paper encoder)"
)
def _resnet50(*, in_chans: int = 3, image_size: int | None = None) -> ResNetEncoder:
    return resnet_encoder("resnet50", in_chans=in_chans)


@register_encoder(
    "vgg16_bn",
    family="cnn",
    num_features=512,
    description="torchvision VGG-16-BN trunk (14.7 M; MKCNet's paper encoder)",
)
def _vgg16_bn(*, in_chans: int = 3, image_size: int | None = None) -> VGGEncoder:
    return vgg_encoder("vgg16_bn", in_chans=in_chans)


@register_encoder(
    "vgg16_bn_tiny",
    family="cnn",
    num_features=128,
    description="VGG-16-BN at 1/4 width, five pre-pool maps (0.9 M; local discrimination)",
)
def _vgg16_bn_tiny(*, in_chans: int = 3, image_size: int | None = None) -> VGGEncoder:
    return vgg_encoder("vgg16_bn_tiny", in_chans=in_chans)


@register_encoder(
    "vgg16_bn_micro", family="cnn", num_features=64, description="vgg16_bn_tiny at 1/2 width (0.2 M; smoke runs, tests)"
)
def _vgg16_bn_micro(*, in_chans: int = 3, image_size: int | None = None) -> VGGEncoder:
    return vgg_encoder("vgg16_bn_micro", in_chans=in_chans)


def backbone_state_dict(encoder: ResNetEncoder | VGGEncoder, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision model's state dict without its classifier, first conv adapted to the encoder's channels."""
    from timm.models import adapt_input_conv

    head = ("fc.", "classifier.")
    out = {k: v for k, v in state.items() if not k.startswith(head)}
    conv = encoder.stem_conv
    key = "conv1.weight" if isinstance(encoder, ResNetEncoder) else "features.0.weight"
    if key in out and out[key].shape[1] != conv.in_channels:
        out[key] = adapt_input_conv(conv.in_channels, out[key].to(torch.float32))
    return out
