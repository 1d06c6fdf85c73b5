"""``qualcl run comcl-detector``: train the lesion detector from lesion masks converted to boxes."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import box_iou

from qualcl.data.readers import load_mask, mask_to_boxes, read_idrid_segmentation
from qualcl.recipes.comcl.detector import LESION_CLASSES, train_detector
from qualcl.recipes.plots import plot_curves
from qualcl.recipes.run_folder import RunFolder

__all__ = ["DETECTOR_PRESETS", "DetectorConfig", "run_comcl_detector"]

SYNTHETIC_CLASSES = ("MA", "HE", "EX", "NV")


@dataclass
class DetectorConfig:
    """Lesion-detector training.

    Attributes:
        preset: Name of the preset.
        dataset: ``"synthetic"`` (masks of the generated set) or ``"idrid"`` (IDRiD segmentation layout).
        data_dir: Dataset folder (synthetic: generated there if missing).
        num_images: Synthetic images to generate.
        lq_ratio: Synthetic low-quality fraction (as CoMCL's ``data.lq_ratio``, so both can share a folder).
        image_size: Side of the images the detector sees.
        architecture: ``"mobilenet_v3"`` or ``"resnet50"``.
        steps: SGD steps.
        batch_size: Images per step.
        lr: Learning rate.
        test_fraction: Share of images held out for the recall / precision check.
        seed: Seed.
        progress: Show progress bars.
    """

    preset: str = "default"
    dataset: str = "synthetic"
    data_dir: str | None = None
    num_images: int = 300
    lq_ratio: float = 0.336
    image_size: int = 128
    architecture: str = "mobilenet_v3"
    steps: int = 300
    batch_size: int = 4
    lr: float = 0.01
    test_fraction: float = 0.2
    seed: int = 0
    progress: bool = True


DETECTOR_PRESETS = {
    "smoke": DetectorConfig(preset="smoke", num_images=12, image_size=64, steps=2, batch_size=2, progress=False),
    "default": DetectorConfig(),
    "paper": DetectorConfig(preset="paper", dataset="idrid", image_size=1024, architecture="resnet50", steps=20000),
}


def _load_rgb(path: Path, size: int) -> Tensor:
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def _boxes_from_masks(masks: dict[str, Path], classes: tuple[str, ...], size: int) -> tuple[Tensor, Tensor]:
    boxes, labels = [], []
    for label, code in enumerate(classes, start=1):
        if code not in masks:
            continue
        mask = load_mask(masks[code])
        small = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
        for box in mask_to_boxes(small):
            boxes.append(box)
            labels.append(label)
    return torch.tensor(boxes, dtype=torch.float32).view(-1, 4), torch.tensor(labels, dtype=torch.long)


def _dataset(config: DetectorConfig, run: RunFolder) -> tuple[Tensor, list[Tensor], list[Tensor], tuple[str, ...]]:
    if config.dataset == "synthetic":
        from qualcl.data.synthetic import ensure_fundus_dataset

        root = ensure_fundus_dataset(
            Path(config.data_dir) if config.data_dir else run.path("data"),
            num_images=config.num_images,
            size=config.image_size,
            seed=config.seed,
            lq_ratio=config.lq_ratio,
            progress=config.progress,
        )
        classes = SYNTHETIC_CLASSES
        items = []
        for image in sorted((root / "images").glob("*.png")):
            masks = {c: root / "masks" / f"{image.stem}_{c}.png" for c in classes}
            items.append((image, {c: p for c, p in masks.items() if p.is_file()}))
    elif config.dataset == "idrid":
        if config.data_dir is None:
            raise ValueError("--data DIR (the IDRiD folder) is required with --dataset idrid")
        classes = LESION_CLASSES
        items = [
            (r.image, r.masks) for split in ("train", "test") for r in read_idrid_segmentation(config.data_dir, split)
        ]
    else:
        raise ValueError(f"comcl-detector supports datasets 'synthetic' and 'idrid', got {config.dataset!r}")
    images, boxes, labels = [], [], []
    for image, masks in items:
        images.append(_load_rgb(image, config.image_size))
        b, lab = _boxes_from_masks(masks, classes, config.image_size)
        boxes.append(b)
        labels.append(lab)
    return torch.stack(images), boxes, labels, classes


def _recall_precision(
    found: list[Tensor], scores: list[Tensor], truth: list[Tensor], min_score: float
) -> dict[str, float]:
    hits = total = kept = correct = 0
    for boxes, score, target in zip(found, scores, truth, strict=True):
        boxes = boxes[score > min_score]
        total += target.shape[0]
        kept += boxes.shape[0]
        if boxes.numel() and target.numel():
            iou = box_iou(boxes, target)
            hits += int((iou.max(dim=0).values >= 0.5).sum())
            correct += int((iou.max(dim=1).values >= 0.5).sum())
    return {
        "recall_iou50": hits / total if total else float("nan"),
        "precision_iou50": correct / kept if kept else float("nan"),
        "boxes_per_image": kept / max(len(found), 1),
    }


def run_comcl_detector(config: DetectorConfig, out: str | Path) -> dict[str, Any]:
    """Train the lesion detector and write ``weights/detector.safetensors`` (+ ``.json``) in ``out``.

    Lesion masks (synthetic ``masks/*_{MA,HE,EX,NV}.png`` or IDRiD's ``*_{MA,HE,EX,SE}.tif``) become
    8-connected boxes; a torchvision Faster R-CNN is trained on the first images and checked on the
    held-out rest (recall and precision at IoU 0.5, for scores > 0.5). Pass the weights to the CoMCL
    recipe as ``--set data.boxes=<out>/weights/detector.safetensors`` for datasets without boxes.

    Args:
        config: See :class:`DetectorConfig`.
        out: Run folder.

    Returns:
        The metrics written to ``metrics.json``.
    """
    run = RunFolder(out)
    run.save_config(config)
    start = time.perf_counter()
    images, boxes, labels, classes = _dataset(config, run)
    n_test = max(1, round(config.test_fraction * images.shape[0]))
    train = slice(0, images.shape[0] - n_test)
    detector, losses = train_detector(
        images[train],
        boxes[train],
        labels[train],
        classes=classes,
        architecture=config.architecture,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        progress=config.progress,
    )
    weights = detector.save(run.path("weights", "detector.safetensors"))
    plot_curves(
        {"loss": (list(range(len(losses))), losses)},
        run.path("plots", "detector_loss.png"),
        title="Faster R-CNN training loss",
        ylabel="sum of losses",
    )
    test_images = images[images.shape[0] - n_test :].float() / 255
    found = detector.detect(test_images)
    metrics = {
        "test": _recall_precision([f.boxes for f in found], [f.scores for f in found], boxes[-n_test:], 0.5),
        "train_images": images.shape[0] - n_test,
        "test_images": n_test,
        "final_loss": losses[-1],
        "seconds": round(time.perf_counter() - start, 1),
        "weights": str(weights),
    }
    run.write_metrics(metrics)
    run.mark_done("detector", **dataclasses.asdict(config))
    return metrics
