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

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchvision.models import detection
from tqdm import tqdm

__all__ = [
    "LESION_CLASSES",
    "Detections",
    "FasterRCNNDetector",
    "GroundTruthDetector",
    "LesionDetector",
    "detect_boxes",
    "train_detector",
]

#: IDRiD's lesion classes (label ids 1..4; 0 is background). The synthetic set has NV instead of SE.
LESION_CLASSES = ("MA", "HE", "EX", "SE")


class Detections(NamedTuple):
    """Boxes found in one image.

    Attributes:
        boxes: ``(K, 4)`` float ``(x1, y1, x2, y2)`` pixels.
        scores: ``(K,)`` confidences in ``[0, 1]``.
        labels: ``(K,)`` class ids (1-based into ``LESION_CLASSES``).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor


@runtime_checkable
class LesionDetector(Protocol):
    """Anything that finds lesion boxes in a batch of ``(N, 3, H, W)`` float images in ``[0, 1]``.

    ``ids`` are the images' dataset indices, for detectors that look boxes up (ground truth).
    """

    def detect(self, images: Tensor, ids: Sequence[int] | None = None) -> list[Detections]:
        """Return one :class:`Detections` per image."""
        ...


class GroundTruthDetector:
    """Returns known boxes (the synthetic set's lesion boxes) with score 1.

    Args:
        boxes: Per dataset index, ``(K, 4)`` boxes.

    Example:
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
        out = []
        for i in ids:
            box = self.boxes[i].to(torch.float32).view(-1, 4)
            k = box.shape[0]
            out.append(Detections(box, torch.ones(k), torch.ones(k, dtype=torch.long)))
        return out


def _build(architecture: str, image_size: int, num_classes: int) -> nn.Module:
    kwargs = {
        "weights": None,
        "weights_backbone": None,
        "num_classes": num_classes + 1,
        "min_size": image_size,
        "max_size": image_size,
        "box_detections_per_img": 100,
    }
    if architecture == "mobilenet_v3":
        return detection.fasterrcnn_mobilenet_v3_large_fpn(**kwargs)  # type: ignore[no-any-return]
    if architecture == "resnet50":
        return detection.fasterrcnn_resnet50_fpn(**kwargs)  # type: ignore[no-any-return]
    raise ValueError(f"architecture must be 'mobilenet_v3' or 'resnet50', got {architecture!r}")


class FasterRCNNDetector(nn.Module):
    """torchvision Faster R-CNN over the four lesion classes, as a :class:`LesionDetector`.

    Args:
        architecture: ``"mobilenet_v3"`` (fast, CPU-friendly) or ``"resnet50"`` (the paper's R50-FPN).
        image_size: Side the images are resized to inside the detector.
        score_threshold: Boxes below it are dropped (CoMCL: 0.05 at test, 0.8–0.9 for patches).
        classes: Lesion class names (label ``i + 1`` is ``classes[i]``).
    """

    def __init__(
        self,
        architecture: str = "mobilenet_v3",
        image_size: int = 512,
        score_threshold: float = 0.05,
        classes: Sequence[str] = LESION_CLASSES,
    ) -> None:
        super().__init__()
        self.architecture = architecture
        self.image_size = image_size
        self.score_threshold = score_threshold
        self.classes = tuple(classes)
        self.model = _build(architecture, image_size, len(self.classes))

    @torch.no_grad()
    def detect(self, images: Tensor, ids: Sequence[int] | None = None) -> list[Detections]:
        """Detect lesions in ``(N, 3, H, W)`` float images in ``[0, 1]``."""
        self.model.eval()
        outputs = self.model(list(images))
        result = []
        for out in outputs:
            keep = out["scores"] >= self.score_threshold
            result.append(Detections(out["boxes"][keep], out["scores"][keep], out["labels"][keep]))
        return result

    def save(self, path: str | Path) -> Path:
        """Write weights (safetensors) and a JSON side file with the architecture."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(target))
        meta = {
            "architecture": self.architecture,
            "image_size": self.image_size,
            "score_threshold": self.score_threshold,
            "classes": list(self.classes),
        }
        target.with_suffix(".json").write_text(json.dumps(meta))
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
        detector = cls(meta["architecture"], meta["image_size"], meta["score_threshold"], meta["classes"])
        detector.model.load_state_dict(load_file(str(source)))
        return detector


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

    Images without boxes are skipped. SGD with momentum 0.9 and weight decay 1e-4, random
    horizontal flips.

    Args:
        images: ``(N, 3, S, S)`` uint8 or float images.
        boxes: Per image ``(K, 4)`` boxes in pixels.
        labels: Per image ``(K,)`` class ids in ``1..len(classes)``.
        classes: Lesion class names.
        architecture: See :class:`FasterRCNNDetector`.
        steps: Optimisation steps.
        batch_size: Images per step.
        lr: SGD learning rate.
        seed: Seed of sampling and initialisation.
        progress: Show a progress bar.

    Returns:
        The trained detector and the loss of every step.
    """
    if images.ndim != 4 or images.shape[0] != len(boxes) or len(boxes) != len(labels):
        raise ValueError("images must be (N, 3, S, S) with one boxes and one labels tensor per image")
    usable = [i for i, b in enumerate(boxes) if b.numel() > 0]
    if not usable:
        raise ValueError("no image has a lesion box: nothing to train the detector on")
    torch.manual_seed(seed)
    detector = FasterRCNNDetector(architecture, images.shape[-1], classes=classes)
    model = detector.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    bar = tqdm(range(steps), desc="detector", disable=not progress)
    for _ in bar:
        pick = torch.randint(len(usable), (min(batch_size, len(usable)),), generator=generator).tolist()
        batch, targets = [], []
        for j in pick:
            i = usable[j]
            image = images[i].float() / 255 if images.dtype == torch.uint8 else images[i].float()
            box = boxes[i].to(torch.float32).view(-1, 4)
            if bool(torch.rand(1, generator=generator) < 0.5):
                width = image.shape[-1]
                image = image.flip(-1)
                box = torch.stack([width - box[:, 2], box[:, 1], width - box[:, 0], box[:, 3]], dim=1)
            batch.append(image)
            targets.append({"boxes": box, "labels": labels[i].to(torch.long)})
        loss_dict = model(batch, targets)
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return detector, losses


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
