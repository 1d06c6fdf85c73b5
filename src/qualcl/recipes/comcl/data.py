"""CoMCL data: labelled fundus images, patch-pair and grading datasets, test-time degradation."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from qualcl.data.levels import split_levels
from qualcl.data.readers import FundusRecord, read_eyeq
from qualcl.samplers import LesionPatchSampler, RandomPatchSampler

__all__ = [
    "FundusImages",
    "GradingDataset",
    "PatchPairDataset",
    "degrade_to_ratio",
    "patch_augmentation",
    "patient_split",
]

#: Fundus mean / std of CoMCL's code (``data.py``), for [0, 1] RGB inputs.
FUNDUS_MEAN = (0.4258, 0.2974, 0.2129)
FUNDUS_STD = (0.2767, 0.2024, 0.1686)


@dataclass
class FundusImages:
    """Labelled fundus images resized to ``size``, kept in memory as uint8.

    Attributes:
        images: ``(N, 3, S, S)`` uint8.
        grade: ``(N,)`` DR grades.
        quality: ``(N,)`` EyeQ quality codes (0 Good, 1 Usable, 2 Reject).
        patient: Patient id per image.
        boxes: Per image, ``(K, 4)`` lesion boxes ``(x1, y1, x2, y2)`` in resized pixels.
        fov: ``(N, S, S)`` bool field of view (the non-black disc).
    """

    images: Tensor
    grade: Tensor
    quality: Tensor
    patient: list[str]
    boxes: list[Tensor]
    fov: Tensor

    def __len__(self) -> int:
        return int(self.grade.shape[0])

    def subset(self, index: Sequence[int] | Tensor) -> FundusImages:
        """The images at ``index``."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return FundusImages(
            self.images[idx],
            self.grade[idx],
            self.quality[idx],
            [self.patient[i] for i in idx.tolist()],
            [self.boxes[i] for i in idx.tolist()],
            self.fov[idx],
        )

    @staticmethod
    def load(
        records: Sequence[FundusRecord],
        size: int,
        boxes: Sequence[Tensor] | None = None,
        progress: Callable[[Sequence[FundusRecord]], Sequence[FundusRecord]] | None = None,
    ) -> FundusImages:
        """Read and resize ``records``; ``boxes`` are in original pixels and get rescaled.

        Args:
            records: Image records (e.g. from :func:`qualcl.data.readers.read_eyeq`).
            size: Output side.
            boxes: Per-record lesion boxes in the original image's pixels, or ``None``.
            progress: Optional wrapper (e.g. ``tqdm``) around the record iteration.
        """
        images, scaled = [], []
        iterator = progress(records) if progress is not None else records
        for i, record in enumerate(iterator):
            with Image.open(record.image) as image:
                rgb = image.convert("RGB")
                w, h = rgb.size
                if (w, h) != (size, size):
                    rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
                images.append(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
            raw = boxes[i] if boxes is not None else torch.zeros(0, 4)
            factor = torch.tensor([size / w, size / h, size / w, size / h])
            box = raw.to(torch.float64) * factor
            scaled.append(torch.cat([box[:, :2].floor(), box[:, 2:].ceil()], dim=1).to(torch.long))
        stack = torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)
        return FundusImages(
            images=stack,
            grade=torch.tensor([r.dr_grade for r in records], dtype=torch.long),
            quality=torch.tensor([r.quality for r in records], dtype=torch.long),
            patient=[r.patient_id for r in records],
            boxes=scaled,
            fov=stack.amax(dim=1) > 12,
        )


def synthetic_boxes(root: Path, records: Sequence[FundusRecord]) -> list[Tensor]:
    """Ground-truth lesion boxes of a synthetic dataset (``ground_truth.json``) for ``records``."""
    truth = json.loads((root / "ground_truth.json").read_text())
    by_name = {Path(r["image"]).name: r for r in truth["images"]}
    out = []
    for record in records:
        entry = by_name.get(record.image.name)
        if entry is None:
            raise ValueError(f"{root / 'ground_truth.json'} has no record for {record.image.name}")
        boxes = [b[:4] for b in entry["boxes"] if b[4] in ("MA", "HE", "EX", "NV")]
        out.append(torch.tensor(boxes, dtype=torch.float64).view(-1, 4))
    return out


def load_eyeq_layout(root: Path, split: str, size: int, *, with_truth_boxes: bool) -> FundusImages:
    """Images of an EyeQ-format folder (real EyeQ, or the synthetic set that writes the same CSVs)."""
    records = read_eyeq(root, split)
    boxes = synthetic_boxes(root, records) if with_truth_boxes else None
    return FundusImages.load(records, size, boxes)


def patient_split(patients: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into ``(keep, held_out)`` with ``fraction`` of the *patients* held out."""
    unique = sorted(set(patients))
    order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {unique[i] for i in order[: round(fraction * len(unique))]}
    keep = [i for i, p in enumerate(patients) if p not in held]
    out = [i for i, p in enumerate(patients) if p in held]
    return keep, out


def patch_augmentation(patch_size: int, strength: str = "paper") -> v2.Compose:
    """Patch augmentation: CoMCL's (``data.py::data_transforms``) or a lighter one for small patches.

    ``"paper"``: flips, ColorJitter(0.4, 0.4, 0.4, 0.1), RandomResizedCrop(scale 0.8–1), RandomAffine(±180°),
    RandomGrayscale(0.2) — made for 128-px patches. ``"light"``: flips, quarter turns and
    ColorJitter(0.2, 0.2, 0.2, 0.02); at 24–32-px patches of 64–96-px images the paper's version leaves too little
    shared content between the two views for a from-scratch encoder to learn in a few hundred steps.
    """
    if strength == "paper":
        geometry: list[v2.Transform] = [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.1),
            v2.RandomResizedCrop(patch_size, scale=(0.8, 1.0), ratio=(0.8, 1.25), antialias=True),
            v2.RandomAffine(degrees=180),
            v2.RandomGrayscale(0.2),
        ]
    elif strength == "light":
        geometry = [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]),
            v2.ColorJitter(0.2, 0.2, 0.2, 0.02),
        ]
    else:
        raise ValueError(f"augmentation must be 'paper' or 'light', got {strength!r}")
    return v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(FUNDUS_MEAN, FUNDUS_STD)])


class PatchPairDataset(Dataset[tuple[Tensor, Tensor, int]]):
    """Item ``i``: two augmented patches of image ``i`` and its level id.

    Lesion levels draw two windows around the same lesion box (:class:`LesionPatchSampler`);
    healthy levels, or lesion images without a usable box, draw one random window inside the
    field of view (:class:`RandomPatchSampler`) viewed twice. With ``binary_levels`` the level id
    is 0 for lesion and 1 for healthy images (CoMCL "w/o multi-level").

    Args:
        data: The images.
        patch_size: Window side.
        seed: Seed of the window draws (mixed with the epoch and the index).
        binary_levels: Use lesion/healthy ids instead of the four levels.
        augmentation: ``"paper"`` or ``"light"`` (see :func:`patch_augmentation`).
    """

    def __init__(
        self,
        data: FundusImages,
        patch_size: int,
        seed: int,
        *,
        binary_levels: bool = False,
        augmentation: str = "paper",
    ) -> None:
        self.data = data
        four = split_levels(data.grade, data.quality, "eyeq")
        self.levels = (four >= 2).long() if binary_levels else four
        self.lesion = LesionPatchSampler(patch_size)
        self.random = RandomPatchSampler(patch_size)
        self.patch_size = patch_size
        self.augment = patch_augmentation(patch_size, augmentation)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw new windows for ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
        image = self.data.images[index]
        size = (image.shape[1], image.shape[2])
        p = self.patch_size
        if self.data.grade[index] > 0 and bool(self.lesion.usable(self.data.boxes[index], size).any()):
            (x1, y1), (x2, y2) = self.lesion.sample(self.data.boxes[index], size, generator=g)
        else:
            x1, y1 = self.random.sample(self.data.fov[index], generator=g)
            x2, y2 = x1, y1
        first = self.augment(image[:, y1 : y1 + p, x1 : x1 + p])
        second = self.augment(image[:, y2 : y2 + p, x2 : x2 + p])
        return first, second, int(self.levels[index])


class GradingDataset(Dataset[tuple[Tensor, int, int]]):
    """Item ``i``: normalised image, DR grade, quality code (flips when ``train``)."""

    def __init__(self, data: FundusImages, *, train: bool) -> None:
        self.data = data
        steps: list[v2.Transform] = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()] if train else []
        self.transform = v2.Compose(
            [*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(FUNDUS_MEAN, FUNDUS_STD)]
        )

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        return (
            self.transform(self.data.images[index]),
            int(self.data.grade[index]),
            int(self.data.quality[index]),
        )


def degrade_to_ratio(data: FundusImages, ratio: float, seed: int) -> FundusImages:
    """A copy of ``data`` whose low-quality fraction is raised to ``ratio`` (CoMCL's 70 % / 100 % test sets).

    Good images are drawn at random and degraded with :func:`qualcl.data.degrade.degrade_tensor`
    to Usable or Reject (alternately); their quality codes are updated. A ratio at or below the
    current one returns ``data`` unchanged.

    Args:
        data: Test images.
        ratio: Target fraction of Usable + Reject images, in ``[0, 1]``.
        seed: Seed of the choice and of the degradations.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
    from qualcl.data.degrade import degrade_tensor

    n = len(data)
    good = torch.nonzero(data.quality == 0).flatten()
    needed = min(good.numel(), math.ceil(ratio * n - 1e-9) - (n - good.numel()))
    if needed <= 0:
        return data
    generator = torch.Generator().manual_seed(seed)
    chosen = good[torch.randperm(good.numel(), generator=generator)[:needed]]
    levels = torch.tensor([1 + rank % 2 for rank in range(needed)])
    images = data.images.clone()
    quality = data.quality.clone()
    images[chosen] = degrade_tensor(images[chosen], levels, generator=generator)
    quality[chosen] = levels
    return FundusImages(images, data.grade, quality, data.patient, data.boxes, data.fov)
