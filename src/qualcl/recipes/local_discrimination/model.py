"""Local-discrimination networks: the pre-training net, the segmentation net and the shape discriminator."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from qualcl.heads import ClusteringHead, PixelEmbeddingHead, UNetDecoder
from qualcl.models import Encoder, build_encoder

__all__ = ["LDNet", "LDOutput", "SegmentationNet", "ShapeDiscriminator"]


class LDOutput(NamedTuple):
    """Pixel embeddings ``(N, D, H, W)`` and soft assignments ``(N, K, H, W)``."""

    embeddings: Tensor
    assignments: Tensor


class LDNet(nn.Module):
    """Encoder → U-Net decoder → embedding branch and clustering branch (``vgg16_bn_tiny`` in the code).

    The code's decoder over the encoder's five-map pyramid: halved middles, a bare concatenation last.

    Args:
        encoder: Encoder name (a pyramid CNN).
        dim: Pixel-embedding size.
        clusters: Clusters of the clustering branch.
    """

    def __init__(self, encoder: str = "vgg16_bn_tiny", dim: int = 32, clusters: int = 16) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder)
        channels = self.encoder.pyramid_channels
        self.decoder = UNetDecoder(channels, decoder_channels=tuple(channels[:-2]), middle="half", last="concat")
        self.embedding = PixelEmbeddingHead(self.decoder.channels, dim)
        self.clustering = ClusteringHead(self.decoder.channels, clusters)

    def forward(self, images: Tensor) -> LDOutput:
        """Embeddings and assignments of ``(N, 3, H, W)`` images at the input resolution."""
        features = self.decoder(self.encoder.forward_pyramid(images))
        return LDOutput(self.embedding(features), self.clustering(features))


class SegmentationNet(nn.Module):
    """A (pre-trained) encoder with a new U-Net decoder and a sigmoid output: the code's transfer network.

    Args:
        encoder: The encoder (copied by the caller when the original must stay untouched).
    """

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder.pyramid_channels, out_channels=1, final_activation="sigmoid")

    def forward(self, images: Tensor) -> Tensor:
        """``(N, 1, H, W)`` foreground probabilities."""
        probs: Tensor = self.decoder(self.encoder.forward_pyramid(images))
        return probs


class ShapeDiscriminator(nn.Module):
    """The shape-guided stage's discriminator: real prior masks vs cluster channel 0.

    Five ``[conv 3×3 → LeakyReLU → max-pool 2]`` blocks, two 3×3 convolutions (each followed by the
    activation), global average pooling, two 1×1 convolutions and a sigmoid, as in the code, except
    that the two 3×3 convolutions are padded (the code's are valid, which needs maps of at least
    5 px after five poolings: 160-px inputs; the CPU presets use 32-64 px). The sigmoid is left to
    the loss (``binary_cross_entropy_with_logits``, the same value, stable).
    The code writes ``nn.LeakyReLU(True)``, which sets the *negative slope* to 1 (every activation
    is the identity); ``leaky_quirk=True`` reproduces that, else the slope is 0.2.

    Args:
        channels: Width of the convolutions.
        leaky_quirk: Reproduce the identity activations.
    """

    def __init__(self, channels: int = 16, leaky_quirk: bool = False) -> None:
        super().__init__()
        slope = 1.0 if leaky_quirk else 0.2
        layers: list[nn.Module] = []
        for width in (1, channels, channels, channels, channels):
            layers += [nn.Conv2d(width, channels, 3, padding=1), nn.LeakyReLU(slope), nn.MaxPool2d(2, ceil_mode=True)]
        for _ in range(2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(slope)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1), nn.LeakyReLU(slope)]
        self.net = nn.Sequential(*layers, nn.Conv2d(channels, 1, 1))

    def forward(self, masks: Tensor) -> Tensor:
        """``(N, 1, H, W)`` masks → ``(N,)`` logits of "a real prior mask" (apply a sigmoid for the probability)."""
        logits: Tensor = self.net(masks).flatten()
        return logits
