"""Lesion detectors for CoMCL's lesion patches: ground-truth boxes, or a torchvision Faster R-CNN.

CoMCL takes lesion patches around the boxes of a detector trained on IDRiD's lesion masks
(Lesion-based CL used MMDetection's Faster R-CNN R50-FPN). Here the detector is torchvision's
Faster R-CNN (MobileNet-v3 FPN by default, ResNet-50 FPN as the paper's), trained from lesion masks
converted to boxes, randomly initialised (no weights are downloaded), and saved as safetensors.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchvision.models import detection
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from qualcl.recipes.callbacks import EpochSetter
from qualcl.recipes.comcl.data import EpochDataset
from qualcl.recipes.driver import train_loader
from qualcl.recipes.modules import History, RecipeModule

__all__ = [
    "LESION_CLASSES",
    "BoxDataset",
    "Detections",
    "DetectorTraining",
    "FasterRCNNDetector",
    "GroundTruthDetector",
    "LesionDetector",
    "collate_detection",
    "detect_boxes",
    "train_detector",
]

#: IDRiD's lesion classes (label ids 1..4; 0 is background). The synthetic set has NV instead of SE.
LESION_CLASSES = ("MA", "HE", "EX", "SE")


class Detections(NamedTuple):
    """Boxes found in one image: ``(K, 4)`` float ``(x1, y1, x2, y2)`` pixels, ``(K,)`` scores and 1-based class ids."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


@runtime_checkable
class LesionDetector(Protocol):
    """Finds lesion boxes in ``(N, 3, H, W)`` float images in ``[0, 1]`` (``ids``: dataset indices, for look-ups)."""

    def detect(self, images: Tensor, ids: Sequence[int] | None = None) -> list[Detections]:
        """Return one :class:`Detections` per image."""
        ...


class GroundTruthDetector:
    """Returns known boxes (the synthetic set's lesion boxes) with score 1.

    Args:
        boxes: Per dataset index, ``(K, 4)`` boxes.

    Examples:
        >>> import torch
        >>> gt = GroundTruthDetector([torch.tensor([[1, 2, 5, 6]])])
        >>> gt.detect(torch.zeros(1, 3, 8, 8), ids=[0])[0].scores
        tensor([1.])
    """

    def __init__(self, boxes: Sequence[Tensor]) -> None:
        self.boxes = list(boxes)

    def detect(self, images: Tensor, ids: Sequence[int] | None = None) -> list[Detections]:
        """Look the boxes of ``ids`` up."""
        if ids is None or len(ids) != images.shape[0]:
            raise ValueError("GroundTruthDetector needs one dataset index per image in ids")
        boxes = [self.boxes[i].to(torch.float32).view(-1, 4) for i in ids]
        return [Detections(b, torch.ones(len(b)), torch.ones(len(b), dtype=torch.long)) for b in boxes]


#: The Faster R-CNN builders of :class:`FasterRCNNDetector`, by ``architecture``.
ARCHITECTURES = {
    "mobilenet_v3": detection.fasterrcnn_mobilenet_v3_large_fpn,
    "resnet50": detection.fasterrcnn_resnet50_fpn,
}


class FasterRCNNDetector(nn.Module):
    """torchvision Faster R-CNN over the four lesion classes, as a :class:`LesionDetector`.

    Args:
        architecture: ``"mobilenet_v3"`` (fast, CPU-friendly) or ``"resnet50"`` (the paper's R50-FPN).
        image_size: Side the images are resized to inside the detector.
        score_threshold: Boxes below it are dropped (CoMCL: 0.05 at test, 0.8–0.9 for patches).
        classes: Lesion class names (label ``i + 1`` is ``classes[i]``).
        box_head_width: Width of the two-layer box head (torchvision's 1024: 51 MB of weights; small runs narrower).
    """

    def __init__(
        self,
        architecture: str = "mobilenet_v3",
        image_size: int = 512,
        score_threshold: float = 0.05,
        classes: Sequence[str] = LESION_CLASSES,
        box_head_width: int = 1024,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be 'mobilenet_v3' or 'resnet50', got {architecture!r}")
        if box_head_width < 1:
            raise ValueError(f"box_head_width must be >= 1, got {box_head_width}")
        self.architecture, self.image_size, self.score_threshold = architecture, image_size, score_threshold
        self.classes = tuple(classes)
        self.model: nn.Module = ARCHITECTURES[architecture](
            weights=None,
            weights_backbone=None,
            num_classes=len(self.classes) + 1,
            min_size=image_size,
            max_size=image_size,
            box_detections_per_img=100,
        )
        self.box_head_width, heads = box_head_width, self.model.roi_heads
        if box_head_width != 1024:  # torchvision's model is built unchanged first: the default stays bitwise the same
            heads.box_head = TwoMLPHead(heads.box_head.fc6.in_features, box_head_width)
            heads.box_predictor = FastRCNNPredictor(box_head_width, len(self.classes) + 1)

    @torch.no_grad()
    def detect(self, images: Tensor, ids: Sequence[int] | None = None) -> list[Detections]:
        """Detect lesions in ``(N, 3, H, W)`` float images in ``[0, 1]``."""
        self.model.eval()
        kept = [(out, out["scores"] >= self.score_threshold) for out in self.model(list(images))]
        return [Detections(out["boxes"][k], out["scores"][k], out["labels"][k]) for out, k in kept]

    def save(self, path: str | Path) -> Path:
        """Write weights (safetensors) and a JSON side file with the architecture."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(target))
        meta = {k: getattr(self, k) for k in ("architecture", "image_size", "score_threshold", "box_head_width")}
        target.with_suffix(".json").write_text(json.dumps({**meta, "classes": list(self.classes)}))
        return target

    @classmethod
    def load(cls, path: str | Path) -> FasterRCNNDetector:
        """Read a detector written by :meth:`save` (no pickle)."""
        source = Path(path)
        meta_path = source.with_suffix(".json")
        if not source.is_file() or not meta_path.is_file():
            raise FileNotFoundError(
                f"detector weights {source} (and {meta_path.name}) not found: run `qualcl run comcl-detector`"
            )
        meta = json.loads(meta_path.read_text())
        width = meta.get("box_head_width", 1024)  # files written before the option: torchvision's width
        detector = cls(meta["architecture"], meta["image_size"], meta["score_threshold"], meta["classes"], width)
        detector.model.load_state_dict(load_file(str(source)))
        return detector


class BoxDataset(EpochDataset[tuple[Tensor, dict[str, Tensor]]]):
    """Item ``i``: the ``i``-th image with boxes, float in ``[0, 1]``, and its target, flipped left-right at random.

    ``images`` are ``(N, 3, S, S)`` uint8 or float, ``boxes`` per image ``(K, 4)`` pixels, ``labels`` per
    image ``(K,)`` class ids. Images without boxes are left out (they teach a detector nothing; none
    with boxes: ``ValueError``); the flips come from ``(seed, epoch, index)``.
    """

    def __init__(self, images: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor], seed: int = 0) -> None:
        usable = [i for i, b in enumerate(boxes) if b.numel() > 0]
        if not usable:
            raise ValueError("no image has a lesion box: nothing to train the detector on")
        self.images, self.seed = images[usable], seed
        self.boxes, self.labels = [boxes[i] for i in usable], [labels[i] for i in usable]

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = self.images[index]
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        box = self.boxes[index].to(torch.float32).view(-1, 4)
        if bool(torch.rand(1, generator=self.generator(index)) < 0.5):
            width = image.shape[-1]
            image = image.flip(-1)
            box = torch.stack([width - box[:, 2], box[:, 1], width - box[:, 0], box[:, 3]], dim=1)
        return image, {"boxes": box, "labels": self.labels[index].to(torch.long)}


def collate_detection(
    items: Sequence[tuple[Tensor, dict[str, Tensor]]],
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Detection batches are lists: images of one size are not stacked, targets differ in length."""
    return [image for image, _ in items], [target for _, target in items]


class DetectorTraining(RecipeModule):
    """Faster R-CNN training: the sum of torchvision's four losses (each in the step's history row), SGD at ``lr``."""

    terms = ("classifier", "box_reg", "objectness", "rpn_box_reg")
    history = History(
        every="step", curves={"loss": "sum", **{f"loss/loss_{n}": n for n in terms}}, title="Faster R-CNN training"
    )

    def __init__(self, detector: FasterRCNNDetector, lr: float = 0.01) -> None:
        super().__init__()
        self.detector, self.lr = detector, lr

    def training_step(self, batch: tuple[list[Tensor], list[dict[str, Tensor]]], batch_idx: int) -> Tensor:
        """Sum of the RPN and box-head losses on a batch."""
        images, targets = batch
        self.detector.model.train()
        losses = self.detector.model(images, targets)
        loss: Tensor = torch.stack(list(losses.values())).sum()
        self.record(loss=loss, **{f"loss/{k}": v for k, v in losses.items()})
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD, momentum 0.9, weight decay 1e-4, on the trainable parameters."""
        params = [p for p in self.detector.model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=1e-4)


def train_detector(
    images: Tensor,
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    *,
    classes: Sequence[str] = LESION_CLASSES,
    architecture: str = "mobilenet_v3",
    steps: int = 200,
    batch_size: int = 4,
    lr: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> tuple[FasterRCNNDetector, list[float]]:
    """Train a :class:`FasterRCNNDetector` from boxes (e.g. lesion masks converted by ``mask_to_boxes``).

    :class:`DetectorTraining` on the CPU for ``steps`` steps (``qualcl run comcl-detector`` runs it on
    the recipe driver: devices, DDP, resume).

    Args:
        images: ``(N, 3, S, S)`` uint8 or float images.
        boxes: Per image ``(K, 4)`` boxes in pixels (images without any are skipped).
        labels: Per image ``(K,)`` class ids in ``1..len(classes)``.
        classes: Lesion class names.
        architecture: See :class:`FasterRCNNDetector`.
        steps: SGD steps.
        batch_size: Images per step.
        lr: SGD learning rate.
        seed: Seed of sampling and initialisation.
        progress: Show a progress bar.

    Returns:
        The trained detector and the loss of every step.
    """
    if images.ndim != 4 or images.shape[0] != len(boxes) or len(boxes) != len(labels):
        raise ValueError("images must be (N, 3, S, S) with one boxes and one labels tensor per image")
    dataset = BoxDataset(images, boxes, labels, seed)
    torch.manual_seed(seed)
    module = DetectorTraining(FasterRCNNDetector(architecture, images.shape[-1], classes=classes), lr)
    batch = min(batch_size, len(dataset))
    loader = train_loader(dataset, batch, seed=seed, drop_last=False, collate_fn=collate_detection)()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        callbacks=[EpochSetter(dataset, loader.sampler)],
    )
    trainer.fit(module, loader)
    return module.detector, [row["loss"] for row in module.history_rows]


def detect_boxes(weights: Path, images: Tensor, *, min_score: float, batch_size: int = 8) -> list[Tensor]:
    """Run a saved detector over ``(N, 3, S, S)`` uint8 images; boxes above ``min_score``, as long pixels."""
    detector = FasterRCNNDetector.load(weights)
    out: list[Tensor] = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size].float() / 255
        for found in detector.detect(chunk):
            keep = found.boxes[found.scores > min_score]
            out.append(torch.cat([keep[:, :2].floor(), keep[:, 2:].ceil()], dim=1).to(torch.long))
    return out
