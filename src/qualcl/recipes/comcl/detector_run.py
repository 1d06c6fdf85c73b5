"""``qualcl run comcl-detector``: train CoMCL's lesion detector from lesion masks converted to boxes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import box_iou

from qualcl.data.images import open_image
from qualcl.data.readers import load_mask, mask_to_boxes, read_idrid_segmentation
from qualcl.recipes.comcl.config import DETECTOR_SPEC, DetectorConfig
from qualcl.recipes.comcl.detector import (
    LESION_CLASSES,
    BoxDataset,
    DetectorTraining,
    FasterRCNNDetector,
    collate_detection,
    usable_images,
)
from qualcl.recipes.driver import Recipe, RunContext, Stage, train_loader
from qualcl.recipes.run_folder import ModelCard

__all__ = ["DETECTOR", "DetectorConfig", "DetectorRecipe", "run_comcl_detector"]

SYNTHETIC_CLASSES = ("MA", "HE", "EX", "NV")


class DetectorData(NamedTuple):
    """Images with their lesion boxes, split into training and held-out images."""

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    classes: tuple[str, ...]
    num_test: int


def _load_rgb(path: Path, size: int) -> Tensor:
    rgb = open_image(path, "RGB").resize((size, size), Image.Resampling.BILINEAR)
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
    #: Defaults ← preset ← ``--dataset`` / ``--data`` ← ``--set`` (the detector's fields are top-level).
    config = DETECTOR_SPEC.config  # type: ignore[assignment]

    def check(self, config: DetectorConfig) -> None:
        """IDRiD needs its folder."""
        if config.dataset == "idrid" and config.data_dir is None:
            raise ValueError("--data DIR (the IDRiD folder) is required with --dataset idrid")

    def load_data(self, ctx: RunContext[DetectorConfig]) -> DetectorData:
        """Images and mask boxes (synthetic: generated once)."""
        config = ctx.config
        if config.dataset == "synthetic":
            root = ctx.synthetic_fundus(
                config.data_dir,
                num_images=config.num_images,
                size=config.image_size,
                seed=config.seed,
                lq_ratio=config.lq_ratio,
            )
            classes = SYNTHETIC_CLASSES
            items = []
            for image in sorted((root / "images").glob("*.png")):
                masks = {c: root / "masks" / f"{image.stem}_{c}.png" for c in classes}
                items.append((image, {c: p for c, p in masks.items() if p.is_file()}))
        else:
            classes = LESION_CLASSES
            items = [
                (r.image, r.masks)
                for split in ("train", "test")
                for r in read_idrid_segmentation(str(config.data_dir), split)
            ]
        images, boxes, labels = [], [], []
        for image, masks in ctx.progress_bar(items, "reading masks"):
            images.append(_load_rgb(image, config.image_size))
            b, lab = _boxes_from_masks(masks, classes, config.image_size)
            boxes.append(b)
            labels.append(lab)
        stack = torch.stack(images)
        return DetectorData(stack, boxes, labels, classes, max(1, round(config.test_fraction * stack.shape[0])))

    def setup(self, ctx: RunContext[DetectorConfig], data: DetectorData) -> DetectorTraining:
        """A randomly initialised Faster R-CNN."""
        detector = FasterRCNNDetector(ctx.config.architecture, ctx.config.image_size, classes=data.classes)
        return DetectorTraining(detector, ctx.config.lr)

    def stages(self, config: DetectorConfig) -> list[Stage]:
        """One stage, ``detector``."""
        return [Stage("detector", self.train)]

    def train(self, ctx: RunContext[DetectorConfig], data: DetectorData, module: DetectorTraining) -> None:
        """Faster R-CNN on the training images that have boxes."""
        config = ctx.config
        end = data.images.shape[0] - data.num_test
        usable = usable_images(data.boxes[:end])
        if not usable:
            raise ValueError("no training image has a lesion box: nothing to train the detector on")
        dataset = BoxDataset(
            data.images[usable], [data.boxes[i] for i in usable], [data.labels[i] for i in usable], config.seed
        )
        batch = min(config.batch_size, len(dataset))
        ctx.fit(
            "detector",
            module,
            train_loader(dataset, batch, seed=config.seed, drop_last=False, collate_fn=collate_detection),
            weights={"detector": module.detector.model},
            max_steps=config.steps,
            every_n_train_steps=max(1, min(50, config.steps // 4)),
            info={"steps": config.steps, "train_images": len(usable)},
        )
        if ctx.run.writable:  # the weights again, with the JSON side file CoMCL's data.boxes reads
            module.detector.save(ctx.run.path("weights", "detector.safetensors"))

    def evaluate(self, ctx: RunContext[DetectorConfig], data: DetectorData, module: DetectorTraining) -> dict[str, Any]:
        """Recall and precision at IoU 0.5 on the held-out images."""
        start = data.images.shape[0] - data.num_test
        test = data.images[start:].float() / 255
        found = module.detector.detect(test)
        rows = ctx.run.read_history("detector")
        return {
            "test": _recall_precision([f.boxes for f in found], [f.scores for f in found], data.boxes[start:], 0.5),
            "train_images": start,
            "test_images": data.num_test,
            "final_loss": rows[-1]["loss"] if rows else float("nan"),
            "weights": str(ctx.run.path("weights", "detector.safetensors")),
        }

    def model_card(
        self, ctx: RunContext[DetectorConfig], data: DetectorData, module: DetectorTraining, results: dict[str, Any]
    ) -> ModelCard:
        """Recall / precision at IoU 0.5."""
        config = ctx.config
        test = results["test"]
        return ModelCard(
            title=f"CoMCL lesion detector ({config.architecture}) on {config.dataset}",
            paper=self.paper,
            summary=(
                f"Preset `{config.preset}`, seed {config.seed}: Faster R-CNN ({config.architecture}) trained for "
                f"{config.steps} steps on {results['train_images']} images at {config.image_size} px with lesion "
                f"boxes from masks ({', '.join(data.classes)}); held out: {results['test_images']} images."
            ),
            headline={"recall@IoU0.5": test["recall_iou50"], "precision@IoU0.5": test["precision_iou50"]},
            plots=["detector.png"],
        )


#: The lesion-detector recipe.
DETECTOR = DetectorRecipe()


#: ``DETECTOR.run(config, out)``: train the detector into the folder ``out``.
run_comcl_detector = DETECTOR.run
