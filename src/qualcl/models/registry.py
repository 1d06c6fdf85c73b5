"""The encoder registry: every encoder name is registered where its builder is written (timm's manner).

A builder is a function ``(*, in_chans, image_size) -> Encoder`` decorated with
:func:`register_encoder`, which records its name, family and pooled feature width;
:func:`qualcl.models.create_encoder` builds any registered name and :func:`list_encoders` lists
them, in registration order (the CNNs of ``qualcl.models.cnn`` and ``qualcl.models.unet``, then the
ViTs of ``qualcl.models.vit``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple, Protocol, TypeVar

from qualcl.models.encoder import Encoder

__all__ = ["ENCODERS", "EncoderBuilder", "EncoderInfo", "list_encoders", "register_encoder"]


class EncoderInfo(NamedTuple):
    """What the registry (and ``qualcl list models``) knows about an encoder name.

    Attributes:
        family: ``"cnn"`` (pooled ``(N, C)``, maps ``(N, C, h, w)``) or ``"vit"`` (tokens ``(N, 1 + L, D)``).
        description: One line: the architecture, its size, where qualcl uses it.
        num_features: Width ``C`` of the pooled features ``(N, C)`` (``Encoder.num_features``).
    """

    family: str
    description: str
    num_features: int


class EncoderBuilder(Protocol):
    """A registered builder: ``(*, in_chans, image_size) -> Encoder``, randomly initialised."""

    def __call__(self, *, in_chans: int = 3, image_size: int | None = None) -> Encoder:
        """Build the encoder for ``in_chans`` input channels (ViTs: position embeddings for ``image_size``)."""
        ...


B = TypeVar("B", bound=EncoderBuilder)

_INFOS: dict[str, EncoderInfo] = {}
_BUILDERS: dict[str, EncoderBuilder] = {}

#: Every registered encoder name with its :class:`EncoderInfo`, in registration order: a read-only
#: view of the registry (register new names with :func:`register_encoder`).
ENCODERS: Mapping[str, EncoderInfo] = MappingProxyType(_INFOS)


def register_encoder(name: str, *, family: str, num_features: int, description: str) -> Callable[[B], B]:
    """Decorator that registers a builder as encoder ``name``; the builder is returned unchanged.

    The builder takes ``(*, in_chans: int = 3, image_size: int | None = None)`` and returns a
    randomly initialised :class:`~qualcl.models.Encoder` whose pooled features are ``(N, num_features)``.

    Args:
        name: The name :func:`qualcl.models.create_encoder` accepts (unique).
        family: ``"cnn"`` or ``"vit"`` (any non-empty word for a new kind); :func:`list_encoders` filters on it.
        num_features: Width ``C`` of the encoder's pooled features ``(N, C)``.
        description: One line for ``qualcl list models``: the architecture, its size, where qualcl uses it.

    Returns:
        The decorator.

    Raises:
        ValueError: ``name`` is already registered, or an argument is empty or not positive.

    Examples:
        >>> from qualcl.models import ResNetEncoder, create_encoder
        >>> from qualcl.models.cnn import resnet_encoder
        >>> @register_encoder("resnet10_doc", family="cnn", num_features=512, description="ResNet-10 again")
        ... def _resnet10_doc(*, in_chans=3, image_size=None) -> ResNetEncoder:
        ...     return resnet_encoder("resnet10", in_chans=in_chans)
        >>> create_encoder("resnet10_doc", in_chans=1).num_features, ENCODERS["resnet10_doc"].family
        (512, 'cnn')
        >>> _ = _unregister("resnet10_doc")  # leave the registry as it was
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not isinstance(family, str) or not family:
        raise ValueError(f"family must be a non-empty string such as 'cnn' or 'vit', got {family!r}")
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"description must be a non-empty string, got {description!r}")

    def decorate(builder: B) -> B:
        if name in _INFOS:
            raise ValueError(f"name={name!r} is already a registered encoder ({_INFOS[name].description})")
        _INFOS[name] = EncoderInfo(family, description, num_features)
        _BUILDERS[name] = builder
        return builder

    return decorate


def _unregister(name: str) -> EncoderInfo:
    """Remove ``name`` from the registry (for tests and examples); returns its info."""
    _BUILDERS.pop(name)
    return _INFOS.pop(name)


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:  # an abbreviation: "vgg16" for "vgg16_bn"
        close = [option for option in options if word and option.startswith(word)]
    return f" (did you mean {close[0]!r}?)" if len(close) == 1 else ""


def _encoder_builder(name: str) -> EncoderBuilder:
    """The registered builder of encoder ``name``; ``ValueError`` naming the argument when there is none."""
    if not isinstance(name, str) or name not in _BUILDERS:
        suggestion = _did_you_mean(name, list(_INFOS)) if isinstance(name, str) else ""
        raise ValueError(f"unknown encoder name={name!r}{suggestion}; choose one of {list(_INFOS)}")
    return _BUILDERS[name]


def list_encoders(family: str | None = None) -> list[str]:
    """Registered encoder names, in registration order, optionally of one ``family`` only.

    Args:
        family: ``"cnn"``, ``"vit"`` (or another registered family); every name when ``None``.

    Returns:
        The names.

    Raises:
        ValueError: ``family`` is not the family of any registered encoder.

    Examples:
        >>> list_encoders("vit")
        ['vit_micro', 'vit_tiny', 'vit_small', 'vit_base', 'convvit_tiny']
        >>> "resnet10" in list_encoders()
        True
    """
    if family is None:
        return list(_INFOS)
    families = list(dict.fromkeys(info.family for info in _INFOS.values()))
    if family not in families:
        raise ValueError(f"unknown encoder family={family!r}; choose one of {families}")
    return [name for name, info in _INFOS.items() if info.family == family]
