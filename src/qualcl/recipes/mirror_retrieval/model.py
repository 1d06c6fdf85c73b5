"""The retrieval network: a shared encoder, mirror attention on its last map, GeM descriptors, optional heads."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl.heads import GeM, MirrorAttention, UNetDecoder
from qualcl.models import build_encoder
from qualcl.recipes.mirror_retrieval.config import ModelConfig

__all__ = ["MirrorRetrievalNet", "RetrievalOutput", "mirror_images"]


class RetrievalOutput(NamedTuple):
    """What one forward pass gives.

    Attributes:
        descriptor: ``(N, D)`` image descriptors (``D = 2C`` with mirror attention: the GeM of the
            horizontal branch, then of the vertical one; ``C`` without; ``model.projection`` ``P`` when set:
            each branch's GeM through one shared linear projection to ``P / 2`` with mirror attention,
            to ``P`` without).
        logits: ``(N, G)`` grade logits of the classifier, or ``None``.
        reconstructions: ``(N, 3, h, w)`` reconstructions of the horizontal and vertical mirrors,
            or ``None``.
        targets: The mirrors those reconstructions aim at, resized to ``(h, w)``, or ``None``.
    """

    descriptor: Tensor
    logits: Tensor | None
    reconstructions: tuple[Tensor, Tensor] | None
    targets: tuple[Tensor, Tensor] | None


def mirror_images(images: Tensor, flip: Tensor, dim: int) -> Tensor:
    """``images`` flipped along ``dim`` where ``flip`` (``(N,)`` bool) is set, unchanged elsewhere."""
    return torch.where(flip.view(-1, *([1] * (images.ndim - 1))), images.flip(dim), images)


class MirrorRetrievalNet(nn.Module):
    """Encoder → mirror attention (on the last feature map) → GeM descriptor; projection, decoders, classifier optional.

    With ``mirrors="encode"`` (or ``"random"``) the encoder (shared weights) also encodes the
    horizontal and vertical mirrors of the image, as the public FundusDR code does; with
    ``"feature"`` the image's own pyramid is flipped instead (one encoder pass). The reconstruction
    decoder (shared by both branches, as in the code) reads the attention output in place of the
    mirror's bottleneck and the mirror's finer maps as skips.

    Args:
        config: The model section.
        num_grades: Grades of the classifier.
        in_chans: Input channels.
    """

    def __init__(self, config: ModelConfig, num_grades: int = 5, in_chans: int = 3) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config.encoder, in_chans=in_chans)
        channels = self.encoder.num_features
        self.attention = (
            None
            if config.attention == "none"
            else MirrorAttention(channels, reduction=config.reduction, variant=config.attention)
        )
        self.gem = GeM(p=config.gem_p, learnable=config.gem_learnable)
        pooled = channels if self.attention is None else 2 * channels
        # with mirror attention one projection serves both branches (P / 2 each): the fine triplet loss
        # compares the descriptor's two halves, which must stay the two branches in one space
        branches = 1 if self.attention is None else 2
        self.projection = nn.Linear(channels, config.projection // branches) if config.projection else None
        self.descriptor_dim = config.projection or pooled
        self.decoder = (
            UNetDecoder(
                self.encoder.pyramid_channels[config.reconstruction_from :],
                out_channels=in_chans,
                upsample="bilinear",
                final_activation="sigmoid",
            )
            if config.reconstruction
            else None
        )
        self.classifier = nn.Linear(self.descriptor_dim, num_grades) if config.classifier else None

    def forward(self, images: Tensor, flip_h: Tensor | None = None, flip_v: Tensor | None = None) -> RetrievalOutput:
        """Descriptors (and head outputs) of ``(N, C, S, S)`` images in ``[0, 1]``.

        ``flip_h`` / ``flip_v`` (``(N,)`` bool, default all set) say whether each mirror is the
        flipped image or the image itself (the public code's random flips).
        """
        n = images.shape[0]
        pyramid = self.encoder.forward_pyramid(images)
        reconstructions = targets = None
        if self.attention is None:
            descriptor = self._project(self.gem(pyramid[-1]))
        else:
            ones = torch.ones(n, dtype=torch.bool, device=images.device)
            flip_h, flip_v = (ones if flip is None else flip for flip in (flip_h, flip_v))
            x_h, x_v = mirror_images(images, flip_h, 3), mirror_images(images, flip_v, 2)
            if self.config.mirrors == "feature":  # the image's own pyramid, flipped
                pyr_h = [mirror_images(p, flip_h, 3) for p in pyramid]
                pyr_v = [mirror_images(p, flip_v, 2) for p in pyramid]
            else:  # the mirrors encoded (one batch of both)
                both = self.encoder.forward_pyramid(torch.cat([x_h, x_v]))
                pyr_h, pyr_v = [p[:n] for p in both], [p[n:] for p in both]
            out = self.attention(pyramid[-1], pyr_h[-1], pyr_v[-1])
            descriptor = torch.cat(
                [self._project(self.gem(out.horizontal)), self._project(self.gem(out.vertical))], dim=1
            )
            if self.decoder is not None:
                start = self.config.reconstruction_from
                reconstructions = (
                    self.decoder([*pyr_h[start:-1], out.horizontal]),
                    self.decoder([*pyr_v[start:-1], out.vertical]),
                )
                size = reconstructions[0].shape[-2:]
                targets = (_resize(x_h, size), _resize(x_v, size))
        logits = self.classifier(descriptor) if self.classifier is not None else None
        return RetrievalOutput(descriptor, logits, reconstructions, targets)

    def _project(self, pooled: Tensor) -> Tensor:
        """``(N, C)`` GeM descriptor of one branch through ``model.projection`` (unchanged without one)."""
        return pooled if self.projection is None else self.projection(pooled)


def _resize(images: Tensor, size: torch.Size) -> Tensor:
    return images if images.shape[-2:] == size else F.adaptive_avg_pool2d(images, (int(size[0]), int(size[1])))
