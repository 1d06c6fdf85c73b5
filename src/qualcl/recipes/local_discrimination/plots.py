"""Rows of the recipe's image grids (:func:`qualcl.recipes.plots.plot_image_grid`): ``(N, 3, H, W)`` RGB in ``[0, 1]``.

Cluster maps, embedding PCA maps, segmentation overlays and landmark similarity maps with their marks.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from torch import Tensor

__all__ = ["cluster_rgb", "heat_rgb", "mark_landmarks", "overlay_rgb", "pca_rgb"]


def pca_rgb(embeddings: Tensor) -> Tensor:
    """``(N, D, H, W)`` → ``(N, 3, H, W)``: the first three principal components of all pixels, scaled to ``[0, 1]``.

    Examples:
        >>> import torch
        >>> pca_rgb(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """
    n, d, h, w = embeddings.shape
    x = embeddings.detach().cpu().double().permute(0, 2, 3, 1).reshape(-1, d)
    x = x - x.mean(dim=0)
    k = min(3, d)
    z = x @ torch.linalg.svd(x, full_matrices=False)[2][:k].T
    z = torch.cat([z, z.new_zeros(z.shape[0], 3 - k)], dim=1)
    low, high = z.min(dim=0).values, z.max(dim=0).values
    z = (z - low) / (high - low).clamp_min(1e-12)
    return z.reshape(n, h, w, 3).permute(0, 3, 1, 2).float()


def cluster_rgb(assignments: Tensor) -> Tensor:
    """``(N, K, H, W)`` soft assignments → each pixel's hard cluster (argmax) in its own colour of ``tab20``."""
    k = assignments.shape[1]
    palette = torch.tensor(plt.get_cmap("tab20", k)(range(k)), dtype=torch.float32)[:, :3]
    return palette[assignments.detach().cpu().argmax(dim=1)].permute(0, 3, 1, 2)


def overlay_rgb(rgb: Tensor, probs: Tensor, masks: Tensor) -> Tensor:
    """Images darkened, the prediction at 0.5 (``(N, H, W)`` probabilities) red, the truth green: overlap yellow."""
    out = rgb.cpu() * 0.45
    out[:, 0] = torch.maximum(out[:, 0], (probs.cpu() > 0.5).float())
    out[:, 1] = torch.maximum(out[:, 1], masks.cpu().float())
    return out


def heat_rgb(maps: Tensor) -> Tensor:
    """``(N, H, W)`` maps (cosine similarity) → ``magma`` colours, each map scaled to its own range."""
    x = maps.detach().cpu().double().flatten(1)
    low, high = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    scaled = ((x - low) / (high - low).clamp_min(1e-12)).view_as(maps)
    return torch.tensor(plt.get_cmap("magma")(scaled.numpy())[..., :3], dtype=torch.float32).permute(0, 3, 1, 2)


def mark_landmarks(rgb: Tensor, predicted: Tensor, truth: Tensor) -> Tensor:
    """A copy of ``(N, 3, S, S)`` images marked at the predicted ``(N, 2)`` ``(x, y)`` (blue x) and true (green o)."""
    out, size = rgb.clone(), rgb.shape[-1]
    radius, width = max(2.0, size / 16), max(0.5, size / 96)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")  # (S, S) against (N, 1, 1) points
    dx, dy = (xs - truth[:, :1, None].cpu()).abs(), (ys - truth[:, 1:, None].cpu()).abs()
    ring = ((dx**2 + dy**2).sqrt() - radius).abs() <= width
    dx, dy = (xs - predicted[:, :1, None].cpu()).abs(), (ys - predicted[:, 1:, None].cpu()).abs()
    pixels = out.permute(0, 2, 3, 1)  # a view of ``out``, (N, S, S, 3)
    pixels[ring] = torch.tensor([0.17, 0.63, 0.17])
    pixels[((dx - dy).abs() <= width) & (dx <= radius)] = torch.tensor([0.12, 0.47, 0.71])
    return out
