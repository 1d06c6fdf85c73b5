"""torchvision backbones by name, with the classifier removed: ``image → (N, D)`` features or ``(N, D, h, w)`` maps."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, ResNet

__all__ = ["BACKBONES", "Backbone", "build_backbone"]

#: Names accepted by :func:`build_backbone` besides any torchvision classification model name.
BACKBONES = ("resnet10", "resnet18", "resnet34", "resnet50", "vgg16_bn", "densenet121", "efficientnet_b0")


class Backbone(nn.Module):
    """A feature extractor with a known output width.

    Attributes:
        features: The module mapping ``(N, C, H, W)`` images to ``(N, out_dim)`` (or to
            ``(N, out_dim, h, w)`` maps when ``pooled`` is false).
        out_dim: Feature width (channels) ``D``.
        pooled: Whether the features are globally pooled vectors.
    """

    def __init__(self, features: nn.Module, out_dim: int, *, pooled: bool = True) -> None:
        super().__init__()
        self.features = features
        self.out_dim = out_dim
        self.pooled = pooled

    def forward(self, images: Tensor) -> Tensor:
        """``(N, C, H, W)`` → ``(N, out_dim)``, or ``(N, out_dim, h, w)`` when not pooled."""
        out: Tensor = self.features(images)
        return out.flatten(1) if self.pooled else out


def build_backbone(name: str, *, in_channels: int = 3, pool: bool = True) -> Backbone:
    """Build a randomly initialised torchvision backbone without its classifier.

    ``resnet10`` is a ResNet with one basic block per stage (4.9 M parameters), for CPU runs.
    Other names are torchvision model names (``resnet18``, ``resnet50``, ``vgg16_bn``,
    ``densenet121``, ...). No weights are downloaded: pretrained weights are the user's opt-in
    (load a state dict into ``backbone.features``).

    Args:
        name: Backbone name.
        in_channels: Input channels (1 for grey images, 3 for colour).
        pool: End with global average pooling (``(N, D)`` features); ``False`` returns the last
            feature map ``(N, D, h, w)`` (MKCNet's attention blocks work on it).

    Returns:
        A :class:`Backbone` with ``out_dim`` set.

    Example:
        >>> import torch
        >>> net = build_backbone("resnet10")
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 512])
        >>> build_backbone("resnet10", in_channels=1, pool=False)(torch.randn(2, 1, 64, 64)).shape
        torch.Size([2, 512, 2, 2])
    """
    if name == "resnet10":
        model: nn.Module = ResNet(BasicBlock, [1, 1, 1, 1])
    else:
        try:
            model = models.get_model(name, weights=None)
        except ValueError:
            raise ValueError(f"unknown backbone {name!r}; try one of {BACKBONES} or a torchvision model name") from None
    if isinstance(model, ResNet):
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        out_dim = model.fc.in_features
        if not pool:
            stem = [model.conv1, model.bn1, model.relu, model.maxpool]
            return Backbone(
                nn.Sequential(*stem, model.layer1, model.layer2, model.layer3, model.layer4), out_dim, pooled=False
            )
        model.fc = nn.Identity()  # type: ignore[assignment]
        return Backbone(model, out_dim)
    if isinstance(model, models.VGG):
        if in_channels != 3:
            model.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        if not pool:
            return Backbone(model.features, 512, pooled=False)
        return Backbone(nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1)), 512)
    classifier = getattr(model, "classifier", None)
    if isinstance(model, (models.DenseNet, models.EfficientNet)) and classifier is not None:
        if isinstance(classifier, nn.Linear):
            out_dim = classifier.in_features
        else:
            linear = next(m for m in classifier.modules() if isinstance(m, nn.Linear))
            out_dim = linear.in_features
        if in_channels != 3:
            raise ValueError(f"in_channels={in_channels} is only supported for ResNet and VGG backbones")
        if not pool:
            tail: list[nn.Module] = [nn.ReLU()] if isinstance(model, models.DenseNet) else []
            return Backbone(nn.Sequential(model.features, *tail), out_dim, pooled=False)
        model.classifier = nn.Identity()  # type: ignore[assignment]
        return Backbone(model, out_dim)
    raise ValueError(f"backbone {name!r} is not supported; try one of {BACKBONES}")
