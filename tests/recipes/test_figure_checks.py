"""The figure check itself: cut-off text and empty axes are found, a good figure passes."""

import matplotlib.pyplot as plt

from figures import figure_problems


def test_a_cut_off_title_is_found_and_a_short_one_passes():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    ax.set_title("a title far too long for a figure this small")
    fig.tight_layout()
    assert figure_problems(fig) == ["text cut off: 'a title far too long for a figure this small'"]
    ax.set_title("short")
    fig.tight_layout()
    assert figure_problems(fig) == []
    plt.close(fig)


def test_empty_axes_are_found_unless_a_twin_draws():
    fig, (left, right) = plt.subplots(1, 2, figsize=(4, 2))
    left.plot([0, 1], [0, 1])
    right.set_title("nothing")
    assert figure_problems(fig) == ["empty axes: 'nothing'"]
    right.twinx().plot([0, 1], [1, 0])
    assert figure_problems(fig) == []
    plt.close(fig)
