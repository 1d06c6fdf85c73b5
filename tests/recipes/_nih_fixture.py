"""A small NIH ChestX-ray14-format folder written by the tests (metadata, split lists, boxes, grey PNGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
#: Cycled over the images: No Finding, the eight ChestX-ray8 findings, and two rows the recipe drops.
LABELS = (
    "No Finding",
    "Atelectasis",
    "No Finding",
    "Cardiomegaly",
    "Effusion",
    "No Finding",
    "Infiltration",
    "Mass",
    "Nodule",
    "No Finding",
    "Pneumonia",
    "Pneumothorax",
    "Mass|Effusion",
    "Hernia",
)


def write_nih_tree(root: Path, *, images: int = 42, size: int = 128, seed: int = 0) -> Path:
    """``images`` radiographs (two per patient, the last third of patients in the test list).

    Diseased images carry a bright square "lesion"; every third one is listed in ``BBox_List_2017.csv``.
    """
    rng = np.random.default_rng(seed)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows, train, test, boxes = [], [], [], []
    patients = (images + 1) // 2
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(images):
        name = f"{i // 2 + 1:08d}_{i % 2:03d}.png"
        label = LABELS[i % len(LABELS)]
        lungs = 90 + 60 * np.exp(-(((xx - size / 2) / (0.35 * size)) ** 2 + ((yy - size / 2) / (0.4 * size)) ** 2))
        array = lungs + rng.normal(0, 12, (size, size))
        if label != "No Finding":
            side = size // 8
            x, y = (int(v) for v in rng.integers(size // 5, size - size // 5 - side, 2))
            array[y : y + side, x : x + side] += 70
            if i % 3 == 0:
                boxes.append(f"{name},{label.split('|')[0]},{x},{y},{side},{side},,,")
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(folder / name)
        patient = i // 2 + 1
        rows.append(f"{name},{label},{i % 2},{patient},0{40 + i % 30}Y,{'MF'[i % 2]},PA,{size},{size},0.143,0.143,")
        (test if patient > 2 * patients // 3 else train).append(name)
    (root / "Data_Entry_2017.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n" + "\n".join(boxes) + "\n")
    return root
