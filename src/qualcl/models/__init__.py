"""Encoders with one contract (pooled features, maps or tokens, a pyramid) on torchvision and timm.

``build_encoder(name)`` builds every encoder the recipes use; nothing here downloads weights:
``pretrained=`` is a local file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from qualcl.models.cnn import (
    VGG16_BN_TINY_CFG,
    ResNetEncoder,
    VGGEncoder,
    backbone_state_dict,
    resnet_encoder,
    vgg_encoder,
)
from qualcl.models.conv import UnfoldConv2d, unfold_small_convs
from qualcl.models.encoder import Encoder
from qualcl.models.text import CaptionTokenizer, PretrainedTextEncoder, TextEncoder, minilm_path
from qualcl.models.unet import UNetEncoder, unet_encoder
from qualcl.models.vit import ConvStem, ViTEncoder, vit_encoder

__all__ = [
    "ENCODERS",
    "VGG16_BN_TINY_CFG",
    "CaptionTokenizer",
    "ConvStem",
    "Encoder",
    "EncoderInfo",
    "PretrainedTextEncoder",
    "ResNetEncoder",
    "TextEncoder",
    "UNetEncoder",
    "UnfoldConv2d",
    "VGGEncoder",
    "ViTEncoder",
    "build_encoder",
    "load_pretrained",
    "minilm_path",
    "unfold_small_convs",
]


class EncoderInfo(NamedTuple):
    """What ``qualcl list models`` shows about an encoder name."""

    family: str
    description: str


#: Names accepted by :func:`build_encoder`.
ENCODERS: dict[str, EncoderInfo] = {
    "resnet10": EncoderInfo("cnn", "ResNet with one basic block per stage (4.9 M parameters; qualcl's CPU default)"),
    "resnet18": EncoderInfo("cnn", "torchvision ResNet-18 (11.2 M)"),
    "resnet34": EncoderInfo("cnn", "torchvision ResNet-34 (21.3 M)"),
    "resnet50": EncoderInfo("cnn", "torchvision ResNet-50 (23.5 M; CoMCL's paper encoder)"),
    "vgg16_bn": EncoderInfo("cnn", "torchvision VGG-16-BN trunk (14.7 M; MKCNet's paper encoder)"),
    "vgg16_bn_tiny": EncoderInfo("cnn", "VGG-16-BN at 1/4 width, five pre-pool maps (0.9 M; local discrimination)"),
    "unet": EncoderInfo("cnn", "U-Net contracting path 64-128-256-512-512 (9.4 M; the FundusDR retrieval trunk)"),
    "unet_small": EncoderInfo("cnn", "U-Net contracting path at 1/4 width, 16-32-64-128-128 (0.6 M)"),
    "vit_tiny": EncoderInfo("vit", "ViT-Ti/16 on timm (5.5 M)"),
    "vit_small": EncoderInfo("vit", "ViT-S/16 on timm (21.6 M)"),
    "vit_base": EncoderInfo("vit", "ViT-B/16 on timm (85.7 M)"),
    "convvit_tiny": EncoderInfo("vit", "conv stem (stride 8) + 6 ViT blocks of width 192, maskable (2.8 M)"),
}


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} do not exist (qualcl never downloads weights)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):  # Lightning, MAE / DeiT, some DDP checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_pretrained(encoder: Encoder, path: str | Path) -> Encoder:
    """Load local weights into ``encoder``; returns it.

    Accepted: an encoder state dict written by qualcl (keys ``net.…``, safetensors or ``.pt``), or
    a torchvision / timm model state dict (its classifier is dropped, the first convolution adapted
    to ``in_chans`` and a ViT's position embeddings resampled to ``image_size``). ``.pt`` / ``.pth``
    files are read with ``weights_only=True``; Lightning (``state_dict``) and MAE (``model``)
    checkpoints are unwrapped. Any other missing or unexpected key is an error.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file holds no state dict, or its keys do not fit the encoder (named).
    """
    file = Path(path)
    state = _read_state_dict(file)
    if not any(k.startswith("net.") for k in state):
        if isinstance(encoder, ViTEncoder):
            state = encoder.backbone_state_dict(state)
        elif isinstance(encoder, (ResNetEncoder, VGGEncoder)):
            state = backbone_state_dict(encoder, state)
        state = {f"net.{k}": v for k, v in state.items()}
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{file} does not fit {type(encoder).__name__}: missing {result.missing_keys[:5]}"
            f"{' …' if len(result.missing_keys) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
            f"{' …' if len(result.unexpected_keys) > 5 else ''}"
        )
    return encoder


_BUILDERS: dict[str, Callable[..., Encoder]] = {
    "cnn": lambda name, in_chans, image_size: (
        resnet_encoder(name, in_chans=in_chans)
        if name.startswith("resnet")
        else unet_encoder(name, in_chans=in_chans)
        if name.startswith("unet")
        else vgg_encoder(name, in_chans=in_chans)
    ),
    "vit": lambda name, in_chans, image_size: vit_encoder(name, in_chans=in_chans, image_size=image_size),
}


def build_encoder(
    name: str, *, in_chans: int = 3, image_size: int | None = None, pretrained: str | Path | None = None
) -> Encoder:
    """Build encoder ``name`` (one of :data:`ENCODERS`), randomly initialised unless ``pretrained`` is given.

    Args:
        name: Encoder name, e.g. ``"resnet10"``, ``"vgg16_bn_tiny"``, ``"vit_small"``.
        in_chans: Input channels (1 for grey images).
        image_size: ViTs: the side their position embeddings are made for (default 224; other sizes
            divisible by 16 are interpolated at run time). CNNs take any size and ignore it.
        pretrained: A local weights file (see :func:`load_pretrained`); nothing is downloaded.

    Returns:
        An :class:`Encoder`.

    Examples:
        >>> import torch
        >>> encoder = build_encoder("resnet18", in_chans=1)
        >>> encoder(torch.randn(2, 1, 64, 64)).shape, encoder.num_features
        (torch.Size([2, 512]), 512)
        >>> build_encoder("vit_tiny", image_size=32).forward_features(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 5, 192])
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {list(ENCODERS)}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
    encoder = _BUILDERS[ENCODERS[name].family](name, in_chans, image_size)
    if pretrained is not None:
        load_pretrained(encoder, pretrained)
    return encoder
