"""Fixture trees shared by the MKCNet recipe tests."""

from pathlib import Path

import numpy as np
from PIL import Image


def ct_tree(root: Path, per_class: int = 6) -> Path:
    """A CT-IQAD layout: ``hq/`` and ``lq/`` sources with two class folders each of random grey PNGs."""
    rng = np.random.default_rng(0)
    for source, classes in (("hq", ("COVID", "non-COVID")), ("lq", ("CT_COVID", "CT_NonCOVID"))):
        for name in classes:
            folder = root / source / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / f"{i}.png")
    return root
