"""Per-pixel heads of local discrimination: an L2-normalised embedding map and soft cluster assignments."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from qualcl._validation import check_batch_statistics, check_feature_map, check_int

__all__ = ["ClusteringHead", "PixelEmbeddingHead"]


class PixelEmbeddingHead(nn.Module):
    r"""``conv 3×3 → BatchNorm → ReLU → conv 3×3``, then each pixel's vector L2-normalised.

    .. math::
        e(p) = \frac{g(x)(p)}{\lVert g(x)(p) \rVert_2}

    so every pixel lies on the unit hypersphere of ``dim`` dimensions, the embedding branch of
    local discrimination (``low_dim = 32`` there).

    Args:
        in_channels: Channels of the decoder map.
        dim: Embedding size ``D`` (32 in the paper).
        hidden_channels: Channels of the middle convolution (default ``in_channels``, as the code).

    Shape:
        ``(N, C, H, W)`` → ``(N, D, H, W)``, unit norm over dim 1.

    Examples:
        >>> import torch
        >>> head = PixelEmbeddingHead(32, dim=16)
        >>> e = head(torch.randn(2, 32, 8, 8))
        >>> e.shape, bool(torch.allclose(e.norm(dim=1), torch.ones(2, 8, 8)))
        (torch.Size([2, 16, 8, 8]), True)

    Reference:
        Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023 (the
        embedding branch of ``models/my_models.py::decoder``).
    """

    def __init__(self, in_channels: int, dim: int = 32, hidden_channels: int | None = None) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        self.dim = check_int("dim", dim)
        hidden = self.in_channels if hidden_channels is None else check_int("hidden_channels", hidden_channels)
        self.net = nn.Sequential(
            nn.Conv2d(self.in_channels, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, self.dim, 3, padding=1),
        )

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"in_channels={self.in_channels}, dim={self.dim}"

    def forward(self, x: Tensor) -> Tensor:
        """The unit-norm embedding map ``(N, D, H, W)`` of ``x`` ``(N, C, H, W)``."""
        check_feature_map("x", x, channels=self.in_channels)
        check_batch_statistics("x", x, self)
        return F.normalize(self.net(x), dim=1)


class ClusteringHead(nn.Module):
    r"""``conv 3×3 → BatchNorm → ReLU → conv 3×3 → sigmoid``, then L1-normalised over the clusters.

    .. math::
        a_k(p) = \frac{\sigma(g_k(x)(p)) + \epsilon}{\sum_{j=1}^{K} (\sigma(g_j(x)(p)) + \epsilon)}

    Each pixel's assignments are positive and sum to 1: a soft partition of the image into ``K``
    regions (the clustering branch of local discrimination; ``K = 16``, 8 for shape-guided
    segmentation). As in the code, ``ε = 1e-9`` is added to every sigmoid before normalising, so
    a pixel whose sigmoids all underflow gets uniform assignments instead of NaN.

    Args:
        in_channels: Channels of the decoder map.
        num_clusters: ``K``.

    Shape:
        ``(N, C, H, W)`` → ``(N, K, H, W)``, summing to 1 over dim 1.

    Examples:
        >>> import torch
        >>> a = ClusteringHead(32, num_clusters=4)(torch.randn(2, 32, 8, 8))
        >>> a.shape, bool(torch.allclose(a.sum(dim=1), torch.ones(2, 8, 8)))
        (torch.Size([2, 4, 8, 8]), True)

    Reference:
        Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023 (the
        clustering branch of ``models/my_models.py::decoder``).
    """

    def __init__(self, in_channels: int, num_clusters: int = 16) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        self.num_clusters = check_int("num_clusters", num_clusters)
        self.eps = 1e-9
        k = self.num_clusters
        self.net = nn.Sequential(
            nn.Conv2d(self.in_channels, k, 3, padding=1),
            nn.BatchNorm2d(k),
            nn.ReLU(inplace=True),
            nn.Conv2d(k, k, 3, padding=1),
        )

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"in_channels={self.in_channels}, num_clusters={self.num_clusters}"

    def forward(self, x: Tensor) -> Tensor:
        """Soft assignments ``(N, K, H, W)`` of ``x`` ``(N, C, H, W)``, summing to 1 per pixel."""
        check_feature_map("x", x, channels=self.in_channels)
        check_batch_statistics("x", x, self)
        s: Tensor = self.net(x).sigmoid() + self.eps
        return s / s.sum(dim=1, keepdim=True)
