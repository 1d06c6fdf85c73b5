"""The figure check the test suite runs on every figure a test saves (``conftest.py``)."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.text import Text


def figure_problems(fig: Figure) -> list[str]:
    """What is wrong with a figure before it is saved: text cut off at its edges, axes with nothing drawn.

    Every visible, non-empty text (titles, axis labels, tick labels, legends, annotations) must lie
    inside the figure (2 px tolerance), and every visible axes must draw something (a line,
    collection, patch or image) or be the twin of one that does. The test suite checks every figure
    a recipe saves with it (tests/recipes/test_figure_checks.py tests the check itself).
    """
    fig.canvas.draw()  # lay out legends and ticks as saving would
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    inside, tight = fig.bbox_inches, fig.get_tightbbox(renderer)
    problems = []
    if tight is not None:
        out = [inside.x0 - tight.x0, inside.y0 - tight.y0, tight.x1 - inside.x1, tight.y1 - inside.y1]
        if max(out) * fig.dpi > 2:  # what is drawn reaches past the figure's edge: some text is cut off
            hidden = {  # tick labels of ticks outside the view: laid out, never drawn
                id(label)
                for ax in fig.axes
                for axis in (ax.xaxis, ax.yaxis)
                for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                if not min(axis.get_view_interval()) - 1e-9 <= tick.get_loc() <= max(axis.get_view_interval()) + 1e-9
                for label in (tick.label1, tick.label2)
            }
            names: dict[str, None] = {}
            for text in fig.findobj(Text):
                if id(text) not in hidden and text.get_visible() and text.get_text().strip():
                    box = text.get_window_extent(renderer)
                    if box.x0 < -2 or box.y0 < -2 or box.x1 > fig.bbox.x1 + 2 or box.y1 > fig.bbox.y1 + 2:
                        names[text.get_text()] = None
            problems.append(f"text cut off: {', '.join(map(repr, names)) or 'beyond the edge'}")
    drawn = {id(ax) for ax in fig.axes if ax.lines or ax.collections or ax.patches or ax.images}
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison or id(ax) in drawn:
            continue
        twins = ax.get_shared_x_axes().get_siblings(ax) + ax.get_shared_y_axes().get_siblings(ax)
        if not any(id(other) in drawn for other in twins if other is not ax):
            problems.append(f"empty axes: {ax.get_title()!r}")
    return problems
