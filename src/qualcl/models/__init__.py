"""Encoders with one contract (pooled features, maps or tokens, a pyramid) on torchvision and timm.

``create_encoder(name)`` (alias ``build_encoder``) builds every encoder the recipes use, by the name
its builder was registered under with :func:`register_encoder`; :func:`list_encoders` lists them.
Nothing here downloads weights: ``pretrained=`` is a local file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qualcl.models.cnn import (
    VGG16_BN_TINY_CFG,
    ResNetEncoder,
    VGGEncoder,
    backbone_state_dict,
    resnet_encoder,  # noqa: F401 (the builders stay importable from here)
    vgg_encoder,  # noqa: F401
)
from qualcl.models.conv import UnfoldConv2d, unfold_small_convs
from qualcl.models.encoder import Encoder
from qualcl.models.registry import (
    ENCODERS,
    EncoderBuilder,
    EncoderInfo,
    _encoder_builder,
    list_encoders,
    register_encoder,
)
from qualcl.models.text import CaptionTokenizer, PretrainedTextEncoder, TextEncoder, minilm_path
from qualcl.models.unet import UNetEncoder, unet_encoder  # noqa: F401
from qualcl.models.vit import ConvStem, ViTEncoder, vit_encoder  # noqa: F401

__all__ = [
    "ENCODERS",
    "VGG16_BN_TINY_CFG",
    "CaptionTokenizer",
    "ConvStem",
    "Encoder",
    "EncoderBuilder",
    "EncoderInfo",
    "PretrainedTextEncoder",
    "ResNetEncoder",
    "TextEncoder",
    "UNetEncoder",
    "UnfoldConv2d",
    "VGGEncoder",
    "ViTEncoder",
    "build_encoder",
    "create_encoder",
    "list_encoders",
    "load_pretrained",
    "minilm_path",
    "register_encoder",
    "unfold_small_convs",
]


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


def create_encoder(
    name: str, *, in_chans: int = 3, image_size: int | None = None, pretrained: str | Path | None = None
) -> Encoder:
    """Build encoder ``name`` (one of :func:`list_encoders`), randomly initialised unless ``pretrained`` is given.

    Args:
        name: Encoder name, e.g. ``"resnet10"``, ``"vgg16_bn_tiny"``, ``"vit_small"``.
        in_chans: Input channels (1 for grey images).
        image_size: ViTs: the side their position embeddings are made for (default 224; other sizes
            divisible by 16 are interpolated at run time). CNNs take any size and ignore it.
        pretrained: A local weights file (see :func:`load_pretrained`); nothing is downloaded.

    Returns:
        An :class:`Encoder`: ``(N, in_chans, H, W)`` images to ``(N, num_features)`` pooled features,
        with ``num_features`` as registered (:data:`ENCODERS`).

    Raises:
        ValueError: ``name`` is not registered (the message names the argument and suggests the
            closest name), or ``in_chans`` is not a positive integer.

    Examples:
        >>> import torch
        >>> encoder = create_encoder("resnet18", in_chans=1)
        >>> encoder(torch.randn(2, 1, 64, 64)).shape, encoder.num_features
        (torch.Size([2, 512]), 512)
        >>> create_encoder("vit_tiny", image_size=32).forward_features(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 5, 192])
    """
    builder = _encoder_builder(name)
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
    encoder = builder(in_chans=in_chans, image_size=image_size)
    if pretrained is not None:
        load_pretrained(encoder, pretrained)
    return encoder


def build_encoder(
    name: str, *, in_chans: int = 3, image_size: int | None = None, pretrained: str | Path | None = None
) -> Encoder:
    """The same as :func:`create_encoder` (the name the recipes use): the same arguments, checks and result.

    Args:
        name: A registered encoder name (:func:`list_encoders`).
        in_chans: Input channels.
        image_size: ViTs: the side of their position embeddings (default 224); CNNs ignore it.
        pretrained: A local weights file (see :func:`load_pretrained`).

    Returns:
        An :class:`Encoder` mapping ``(N, in_chans, H, W)`` to ``(N, num_features)``.

    Examples:
        >>> import torch
        >>> build_encoder("vgg16_bn_tiny")(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 128])
    """
    return create_encoder(name, in_chans=in_chans, image_size=image_size, pretrained=pretrained)
