"""Paper recipes: each wires qualcl primitives into an end-to-end, resumable run.

``RECIPES`` maps the names accepted by ``qualcl run NAME`` to their command-line wiring.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple

from qualcl.recipes.comcl_cli import add_comcl_arguments, add_detector_arguments, main_comcl, main_detector
from qualcl.recipes.mkcnet_cli import add_mkcnet_arguments, main_mkcnet

__all__ = ["RECIPES", "Recipe"]


class Recipe(NamedTuple):
    """A runnable recipe: its one-line description, its options and its entry point."""

    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]


RECIPES: dict[str, Recipe] = {
    "comcl": Recipe(
        "CoMCL (MICCAI 2024): multi-level contrastive pre-training with self-paced hard negatives, "
        "then DR grading (or chest X-ray diagnosis) evaluated per quality level",
        add_comcl_arguments,
        main_comcl,
    ),
    "comcl-detector": Recipe(
        "the lesion detector CoMCL takes lesion patches from (torchvision Faster R-CNN on lesion masks)",
        add_detector_arguments,
        main_detector,
    ),
    "mkcnet": Recipe(
        "MKCNet (CVPR 2023): Task Net + meta-learned knowledge co-embedding (second-order meta step), "
        "diagnosis AUC / ACC / F1 per quality level",
        add_mkcnet_arguments,
        main_mkcnet,
    ),
}
