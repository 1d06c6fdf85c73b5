"""Plots of local discrimination: cluster maps, embedding PCA maps, segmentation overlays, landmark similarity maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from qualcl.recipes.plots import wrap_title

__all__ = ["pca_rgb", "plot_assignments", "plot_embedding_pca", "plot_landmarks", "plot_segmentations"]


def _rgb(image: Tensor) -> Tensor:
    """``(3, H, W)`` uint8 or float → ``(H, W, 3)`` float in ``[0, 1]``."""
    x = image.detach().cpu()
    x = x.float() / 255 if not x.is_floating_point() else x.float()
    return x.clamp(0, 1).permute(1, 2, 0)


def _grid(rows: int, cols: int) -> tuple[Any, Any]:
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows + 0.4), dpi=110, squeeze=False)
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig, axes


def _save(fig: Any, path: str | Path, title: str) -> Path:
    fig.suptitle(wrap_title(title, fig, 9), fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def pca_rgb(embeddings: Tensor) -> Tensor:
    """``(N, D, H, W)`` → ``(N, H, W, 3)``: the first three principal components of all pixels, scaled to ``[0, 1]``.

    Examples:
        >>> import torch
        >>> pca_rgb(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 4, 4, 3])
    """
    n, d, h, w = embeddings.shape
    x = embeddings.detach().cpu().double().permute(0, 2, 3, 1).reshape(-1, d)
    x = x - x.mean(dim=0)
    k = min(3, d)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    z = x @ v[:k].T
    if k < 3:
        z = torch.cat([z, z.new_zeros(z.shape[0], 3 - k)], dim=1)
    low, high = z.min(dim=0).values, z.max(dim=0).values
    z = (z - low) / (high - low).clamp_min(1e-12)
    colours: Tensor = z.reshape(n, h, w, 3).float()
    return colours


def plot_assignments(
    images: Tensor, assignments: Tensor, captions: Sequence[str], path: str | Path, *, title: str
) -> Path:
    """Each image and its hard cluster map (argmax over the ``K`` soft assignments, one colour per cluster)."""
    n, k = assignments.shape[:2]
    fig, axes = _grid(2, n)
    cmap = plt.get_cmap("tab20", k)
    for i in range(n):
        axes[0][i].imshow(_rgb(images[i]).numpy())
        axes[0][i].set_title(captions[i], fontsize=6)
        axes[1][i].imshow(assignments[i].argmax(dim=0).cpu().numpy(), cmap=cmap, vmin=0, vmax=k - 1)
    axes[1][0].set_ylabel(f"{k} clusters", fontsize=7)
    return _save(fig, path, title)


def plot_embedding_pca(
    images: Tensor, embeddings: Tensor, captions: Sequence[str], path: str | Path, *, title: str
) -> Path:
    """Each image and its pixel embeddings' first three principal components shown as RGB (a shared projection)."""
    n = images.shape[0]
    colours = pca_rgb(embeddings)
    fig, axes = _grid(2, n)
    for i in range(n):
        axes[0][i].imshow(_rgb(images[i]).numpy())
        axes[0][i].set_title(captions[i], fontsize=6)
        axes[1][i].imshow(colours[i].numpy())
    axes[1][0].set_ylabel("embedding PCA", fontsize=7)
    return _save(fig, path, title)


def plot_segmentations(
    images: Tensor, probs: Tensor, masks: Tensor, captions: Sequence[str], path: str | Path, *, title: str
) -> Path:
    """Images and overlays of the prediction at 0.5 (red) and the truth (green); overlap is yellow."""
    n = images.shape[0]
    fig, axes = _grid(2, n)
    for i in range(n):
        base = _rgb(images[i])
        pred, truth = (probs[i].cpu() > 0.5).float(), masks[i].cpu().float()
        overlay = base * 0.45
        overlay[..., 0] = torch.maximum(overlay[..., 0], pred)
        overlay[..., 1] = torch.maximum(overlay[..., 1], truth)
        axes[0][i].imshow(base.numpy())
        axes[0][i].set_title(captions[i], fontsize=6)
        axes[1][i].imshow(overlay.clamp(0, 1).numpy())
    axes[1][0].set_ylabel("prediction / truth", fontsize=7)
    return _save(fig, path, title)


def plot_landmarks(
    images: Tensor,
    similarity: Tensor,
    predicted: Tensor,
    truth: Tensor,
    captions: Sequence[str],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Images with the predicted (x) and true (o) landmark, and the similarity map the prediction peaks in."""
    n = images.shape[0]
    fig, axes = _grid(2, n)
    for i in range(n):
        for row in (0, 1):
            ax = axes[row][i]
            if row == 0:
                ax.imshow(_rgb(images[i]).numpy())
                ax.set_title(captions[i], fontsize=6)
            else:
                ax.imshow(similarity[i].cpu().numpy(), cmap="magma")
            ax.plot(float(truth[i, 0]), float(truth[i, 1]), "o", mfc="none", mec="#2ca02c", ms=7, mew=1.5)
            ax.plot(float(predicted[i, 0]), float(predicted[i, 1]), "x", color="#1f77b4", ms=7, mew=1.5)
    axes[1][0].set_ylabel("cosine similarity", fontsize=7)
    return _save(fig, path, title)
