"""Plots every recipe writes: curves, confusion matrices, 2-D embedding maps, bar charts, retrieval grids (Agg)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

if TYPE_CHECKING:
    from qualcl.recipes.modules import History

__all__ = [
    "plot_confusion",
    "plot_curves",
    "plot_embedding",
    "plot_grouped_bars",
    "plot_heatmap",
    "plot_history",
    "plot_image_grid",
    "plot_retrieval_grid",
    "plot_variant_dots",
    "save_figure",
    "wrap_title",
]


def save_figure(fig: Figure, path: str | Path, *, tight: bool = False) -> Path:
    """Lay ``fig`` out, write it to ``path`` (its folder made if needed) and close it; returns the path.

    ``tight``: crop to the drawn content (``bbox_inches="tight"``: legends outside the axes stay whole).
    """
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return out


def wrap_title(text: str, fig: Figure, fontsize: float = 12.0) -> str:
    r"""``text`` broken into lines that fit the figure's width at ``fontsize`` points (titles never cut off).

    Examples:
        >>> fig = plt.figure(figsize=(3, 2), dpi=100)
        >>> wrap_title("a title much too long to fit on one line of a small figure", fig).count("\n")
        1
        >>> plt.close(fig)
    """
    width_px = fig.get_figwidth() * fig.dpi * 0.95
    per_char = fontsize * fig.dpi / 72 * 0.55  # an average glyph of the default font
    return textwrap.fill(text, width=max(int(width_px / per_char), 12), break_long_words=False)


def plot_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str,
    xlabel: str = "step",
    ylabel: str = "",
    secondary: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    secondary_label: str = "",
    integer_x: bool | None = None,
) -> Path:
    """Line plot of named ``(x, y)`` series, optionally with a second y axis; returns the PNG path.

    One style for every curve a recipe draws: each series its own colour across both axes (the
    second axis's series dashed), markers when a series has at most 20 points (a one-epoch curve is
    a visible point), integer ticks on a step or epoch axis (``integer_x``, default: when ``xlabel``
    is ``"step"`` or ``"epoch"``), one legend for both axes, below the plot when it holds more than
    four entries.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    few = max((len(list(x)) for x, _ in [*series.values(), *(secondary or {}).values()]), default=0) <= 20
    marker = "o" if few else None  # a curve of one or a few points shows its points
    for colour, (name, (x, y)) in enumerate(series.items()):
        ax.plot(list(x), list(y), label=name, lw=1.4, color=f"C{colour % 10}", marker=marker, ms=3)
    ax.set(title=wrap_title(title, fig), xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if integer_x if integer_x is not None else xlabel in ("step", "epoch"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        right = ax.twinx()
        for colour, (name, (x, y)) in enumerate(secondary.items(), start=len(series)):
            right.plot(list(x), list(y), label=name, lw=1.2, ls="--", color=f"C{colour % 10}", marker=marker, ms=3)
        right.set_ylabel(secondary_label)
        h2, l2 = right.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if len(handles) > 4:
        ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    elif handles:
        ax.legend(handles, labels, fontsize=8, loc="best")
    return save_figure(fig, path)


def plot_history(rows: Sequence[Mapping[str, float]], history: History, path: str | Path, *, title: str) -> Path | None:
    """A stage's history rows drawn as its :class:`~qualcl.recipes.modules.History` declares; ``None`` without rows."""
    if not rows:
        return None
    key = history.every

    def series(columns: Mapping[str, str]) -> dict[str, tuple[list[float], list[float]]]:
        out = {}
        for column, label in columns.items():
            points = [(row[key], row[column]) for row in rows if column in row and key in row]
            if points:
                out[label] = ([x for x, _ in points], [y for _, y in points])
        return out

    return plot_curves(
        series(history.curves),
        path,
        title=history.title or title,
        xlabel=key,
        ylabel=history.ylabel,
        secondary=series(history.metrics) or None,
        secondary_label=history.metrics_label,
    )


def plot_confusion(matrix: Tensor, class_names: Sequence[str], path: str | Path, *, title: str) -> Path:
    """Heat map of a ``(C, C)`` confusion matrix (rows true, columns predicted) with counts in the cells.

    The colour is the share of the true class's images (row-normalised), as its colour bar says.
    """
    counts = matrix.detach().cpu().to(torch.float64)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(5.4, 4.6), dpi=110)
    shown = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            colour = "white" if rates[i, j] > 0.6 else "black"
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", color=colour, fontsize=8)
    ticks = list(range(len(class_names)))
    long = max((len(str(n)) for n in class_names), default=0) > 3
    ax.set_xticks(ticks, list(class_names), rotation=45 if long else 0, ha="right" if long else "center")
    ax.set_yticks(ticks, list(class_names))
    ax.set(title=wrap_title(title, fig), xlabel="predicted", ylabel="true (cells: counts)")
    return save_figure(fig, path)


def plot_embedding(
    features: Tensor, labels: Tensor, class_names: Sequence[str], path: str | Path, *, title: str
) -> Path:
    """2-D PCA map of ``(N, D)`` features coloured by ``(N,)`` integer labels."""
    x = features.detach().cpu().to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    if x.shape[0] >= 2 and x.shape[1] >= 2:
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        xy = x @ v[:2].T
    else:
        xy = torch.zeros(x.shape[0], 2, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=110)
    cmap = plt.get_cmap("tab10")
    for index, name in enumerate(class_names):
        keep = labels.cpu() == index
        if bool(keep.any()):
            ax.scatter(xy[keep, 0].numpy(), xy[keep, 1].numpy(), s=8, color=cmap(index % 10), label=name)
    ax.set(title=wrap_title(title, fig), xlabel="PC 1", ylabel="PC 2")
    ax.legend(fontsize=7, markerscale=2)
    return save_figure(fig, path)


def plot_variant_dots(
    values: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, *, title: str, ylabel: str
) -> Path:
    """Per variant (rows) and setting (colours): every seed as a dot, the mean as a bar; returns the PNG path.

    Args:
        values: ``{variant: {setting: [value per seed]}}`` (non-finite values are skipped).
        path: Output PNG.
        title: Figure title.
        ylabel: Axis label of the values.
    """
    variants = list(values)
    settings = list(dict.fromkeys(s for per in values.values() for s in per))
    label_width = 0.065 * max((len(v) for v in variants), default=0)  # inches of the longest tick label
    fig, ax = plt.subplots(figsize=(5.5 + label_width, 0.55 * max(len(variants), 2) + 1.4), dpi=110)
    height = 0.8 / max(len(settings), 1)
    colours = plt.get_cmap("tab10")
    for j, setting in enumerate(settings):
        for i, variant in enumerate(variants):
            points = [float(v) for v in values[variant].get(setting, []) if math.isfinite(v)]
            if not points:
                continue
            y, mean = i - 0.4 + height * (j + 0.5), sum(points) / len(points)
            ax.barh(y, mean, height=height * 0.9, color=colours(j), alpha=0.35, label=setting if i == 0 else None)
            ax.scatter(points, [y] * len(points), color=colours(j), s=14, zorder=3)
    ax.set_yticks(range(len(variants)), variants)
    ax.invert_yaxis()
    ax.set_xlabel(ylabel)
    # over the whole figure: a long title is not clipped by the labels
    fig.suptitle(wrap_title(title, fig, 10), fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path, tight=True)


def plot_grouped_bars(
    values: Mapping[str, Mapping[str, float]],
    path: str | Path,
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> Path:
    """Grouped bar chart: ``values[series][category]``, one bar per series in each category group.

    Missing or non-finite values leave a gap. Returns the PNG path.
    """
    series = list(values)
    categories = list(dict.fromkeys(c for per in values.values() for c in per))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(categories) + 2), 3.8), dpi=110)
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(series):
        kept = [j for j, category in enumerate(categories) if math.isfinite(values[name].get(category, math.nan))]
        xs, ys = [j - 0.4 + width * (i + 0.5) for j in kept], [values[name][categories[j]] for j in kept]
        ax.bar(xs, ys, width=width * 0.95, color=cmap(i % 10), label=name)
    ax.set_xticks(list(range(len(categories))), categories)
    ax.set(title=wrap_title(title, fig), xlabel=xlabel, ylabel=ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, axis="y")
    if len(series) > 1:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_retrieval_grid(
    queries: Tensor,
    retrieved: Tensor,
    query_labels: Sequence[str],
    retrieved_labels: Sequence[Sequence[str]],
    hits: Tensor,
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Each query (first column) and its top-k results, hits framed green and misses red.

    Args:
        queries: ``(Q, C, H, W)`` images (uint8, or float in ``[0, 1]``).
        retrieved: ``(Q, k, C, H, W)`` images of the results, most similar first.
        query_labels: A caption per query (e.g. ``"grade 2 · Usable"``).
        retrieved_labels: A caption per result.
        hits: ``(Q, k)`` bool, whether each result is relevant.
        path: PNG file.
        title: Figure title.
    """
    q, k = hits.shape
    fig, axes = plt.subplots(q, k + 1, figsize=(1.25 * (k + 1), 1.45 * q + 0.5), dpi=110, squeeze=False)
    for i in range(q):
        _show_image(axes[i, 0], queries[i])
        axes[i, 0].set_title(f"query\n{query_labels[i]}", fontsize=6)
        plt.setp(list(axes[i, 0].spines.values()), color="black", linewidth=2)
        for j in range(k):
            ax = axes[i, j + 1]
            _show_image(ax, retrieved[i, j])
            ax.set_title(f"{j + 1}: {retrieved_labels[i][j]}", fontsize=6)
            plt.setp(list(ax.spines.values()), color="#2ca02c" if bool(hits[i, j]) else "#d62728", linewidth=3)
    fig.suptitle(wrap_title(title, fig, 9), fontsize=9)
    return save_figure(fig, path)


def _show_image(ax: Any, image: Tensor) -> None:
    """A ``(C, H, W)`` image (uint8, or float in ``[0, 1]``; one channel in grey) without ticks."""
    array = image.detach().cpu()
    array = (array.float() if array.is_floating_point() else array.float() / 255.0).clamp(0, 1).permute(1, 2, 0)
    ax.imshow(array.squeeze(-1).numpy() if array.shape[-1] == 1 else array.numpy(), cmap="gray")
    ax.set(xticks=[], yticks=[])


def plot_image_grid(
    images: Tensor, path: str | Path, *, title: str, column_titles: Sequence[str] = (), row_titles: Sequence[str] = ()
) -> Path:
    """A ``(rows, columns, C, H, W)`` grid of images in ``[0, 1]`` (e.g. masked input / reconstruction / original)."""
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 0.6, 1.6 * rows + 0.5), dpi=110, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            _show_image(ax, images[r, c])
            if r == 0 and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=8)
            if c == 0 and r < len(row_titles):
                ax.set_ylabel(row_titles[r], fontsize=7)
    fig.suptitle(wrap_title(title, fig, 10), fontsize=10)
    return save_figure(fig, path, tight=True)


def plot_heatmap(
    matrix: Tensor,
    path: str | Path,
    *,
    title: str,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """Heat map of a ``(R, C)`` matrix (e.g. image × class-prompt cosine similarities) with a colour bar."""
    values = matrix.detach().cpu().float()
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * values.shape[1], 1.0 + 0.22 * values.shape[0]), dpi=110)
    shown = ax.imshow(values.numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(list(range(len(column_labels))), list(column_labels), rotation=45, ha="right", fontsize=7)
    ax.set_yticks(list(range(len(row_labels))), list(row_labels), fontsize=6)
    ax.set(title=wrap_title(title, fig), xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(shown, ax=ax, fraction=0.05)
    return save_figure(fig, path, tight=True)
