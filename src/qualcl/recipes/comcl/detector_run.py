"""``qualcl run comcl-detector``: train CoMCL's lesion detector from lesion masks converted to boxes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import box_iou

from qualcl.data.loading import read_resized
from qualcl.data.readers import load_mask, mask_to_boxes, read_idrid_segmentation
from qualcl.recipes.comcl.config import DETECTOR_SPEC, DetectorConfig
from qualcl.recipes.comcl.detector import (
    LESION_CLASSES,
    BoxDataset,
    Detections,
    DetectorTraining,
    FasterRCNNDetector,
    collate_detection,
)
from qualcl.recipes.driver import Recipe, RunContext, Stage, train_loader
from qualcl.recipes.run_folder import ModelCard

__all__ = ["DETECTOR", "DetectorRecipe", "run_comcl_detector"]

SYNTHETIC_CLASSES = ("MA", "HE", "EX", "NV")
Ctx = RunContext[DetectorConfig]


class DetectorData(NamedTuple):
    """Images with their lesion boxes; the last ``num_test`` are held out."""

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    classes: tuple[str, ...]
    num_test: int


def _boxes_from_masks(masks: dict[str, Path], classes: tuple[str, ...], size: int) -> tuple[Tensor, Tensor]:
    """The 8-connected boxes of an image's lesion masks (resized to ``size``) and their 1-based class ids."""
    boxes, labels = [], []
    for label, code in enumerate(classes, start=1):
        if code in masks and masks[code].is_file():
            mask = Image.fromarray(load_mask(masks[code])).resize((size, size), Image.Resampling.NEAREST)
            found = mask_to_boxes(np.asarray(mask))
            boxes += found
            labels += [label] * len(found)
    return torch.tensor(boxes, dtype=torch.float32).view(-1, 4), torch.tensor(labels, dtype=torch.long)


def _recall_precision(found: list[Detections], truth: list[Tensor], min_score: float) -> dict[str, float]:
    """Box recall and precision at IoU 0.5 of the detections scored above ``min_score``, and boxes per image."""
    hits = total = kept = correct = 0
    for detections, target in zip(found, truth, strict=True):
        boxes = detections.boxes[detections.scores > min_score]
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


class DetectorRecipe(Recipe[DetectorConfig, DetectorData, DetectorTraining]):
    """Train the lesion detector and write ``weights/detector.safetensors`` (+ ``.json``).

    Lesion masks (synthetic ``masks/*_{MA,HE,EX,NV}.png`` or IDRiD's ``*_{MA,HE,EX,SE}.tif``) become
    8-connected boxes; a torchvision Faster R-CNN (:class:`~qualcl.recipes.comcl.detector.DetectorTraining`)
    is trained on the first images and checked on the held-out rest (recall and precision at IoU
    0.5, for scores > 0.5). Pass the weights to CoMCL as
    ``--set data.boxes=<out>/weights/detector.safetensors`` for datasets without boxes.
    """

    spec = DETECTOR_SPEC
    paper = 'Hou et al., "A Clinical-oriented Multi-level Contrastive Learning Method ...", MICCAI 2024 (lesion boxes)'

    def load_data(self, ctx: Ctx) -> DetectorData:
        """Images and the boxes of their lesion masks (synthetic: generated once)."""
        d = ctx.config.data
        root = ctx.dataset_root(d)
        if d.dataset == "synthetic":
            classes, images = SYNTHETIC_CLASSES, sorted((root / "images").glob("*.png"))
            masks = [{c: root / "masks" / f"{image.stem}_{c}.png" for c in classes} for image in images]
        else:
            classes = LESION_CLASSES
            records = [r for split in ("train", "test") for r in read_idrid_segmentation(root, split)]
            images, masks = [r.image for r in records], [r.masks for r in records]
        stack, _ = read_resized(images, d.image_size, progress=ctx.image_progress)
        found = [_boxes_from_masks(m, classes, d.image_size) for m in ctx.progress_bar(masks, "reading masks")]
        num_test = max(1, round(ctx.config.test_fraction * len(stack)))
        return DetectorData(stack, [b for b, _ in found], [lab for _, lab in found], classes, num_test)

    def setup(self, ctx: Ctx, data: DetectorData) -> DetectorTraining:
        """A randomly initialised Faster R-CNN."""
        c = ctx.config
        detector = FasterRCNNDetector(c.architecture, c.data.image_size, 0.05, data.classes, c.box_head_width)
        return DetectorTraining(detector, ctx.config.lr)

    def stages(self, config: DetectorConfig) -> list[Stage]:
        """One stage, ``detector``."""
        return [Stage("detector", self.train)]

    def train(self, ctx: Ctx, data: DetectorData, module: DetectorTraining) -> None:
        """Faster R-CNN on the training images that have boxes."""
        c, end = ctx.config, len(data.images) - data.num_test
        dataset = BoxDataset(data.images[:end], data.boxes[:end], data.labels[:end], c.seed)
        batch = min(c.batch_size, len(dataset))
        ctx.fit(
            "detector",
            module,
            train_loader(dataset, batch, seed=c.seed, drop_last=False, collate_fn=collate_detection),
            weights={"detector": module.detector.model},
            max_steps=c.steps,
            every_n_train_steps=max(1, min(50, c.steps // 4)),
            info={"steps": c.steps, "train_images": len(dataset)},
        )
        if ctx.run.writable:  # the weights again, with the JSON side file CoMCL's data.boxes reads
            module.detector.save(ctx.run.path("weights", "detector.safetensors"))

    def evaluate(self, ctx: Ctx, data: DetectorData, module: DetectorTraining) -> dict[str, Any]:
        """Recall and precision at IoU 0.5 on the held-out images."""
        start = len(data.images) - data.num_test
        found = module.detector.detect(data.images[start:].float() / 255)
        rows = ctx.run.read_history("detector")
        return {
            "test": _recall_precision(found, data.boxes[start:], 0.5),
            "train_images": start,
            "test_images": data.num_test,
            "final_loss": rows[-1]["loss"] if rows else float("nan"),
            "weights": str(ctx.run.path("weights", "detector.safetensors")),
        }

    def model_card(self, ctx: Ctx, data: DetectorData, module: DetectorTraining, results: dict[str, Any]) -> ModelCard:
        """Recall / precision at IoU 0.5."""
        c, test = ctx.config, results["test"]
        return ModelCard(
            title=f"CoMCL lesion detector ({c.architecture}) on {c.data.dataset}",
            paper=self.paper,
            summary=(
                f"Preset `{c.preset}`, seed {c.seed}: Faster R-CNN ({c.architecture}) trained for {c.steps} steps "
                f"on {results['train_images']} images at {c.data.image_size} px with lesion boxes from masks "
                f"({', '.join(data.classes)}); held out: {results['test_images']} images."
            ),
            headline={"recall@IoU0.5": test["recall_iou50"], "precision@IoU0.5": test["precision_iou50"]},
            plots=["detector.png"],
        )


#: The lesion-detector recipe.
DETECTOR = DetectorRecipe()
#: ``DETECTOR.run(config, out)``: train the detector into the folder ``out``.
run_comcl_detector = DETECTOR.run
