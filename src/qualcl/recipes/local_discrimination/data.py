"""Local-discrimination data: unlabelled pre-training images, labelled segmentation splits, landmarks, priors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from qualcl.data.augment import item_generator
from qualcl.data.images import open_image
from qualcl.data.loading import FUNDUS_QUALITY, UNRATED, ImageProgress, patient_split, read_resized
from qualcl.data.readers import SEGMENTATION_DATASETS, load_segmentation_sample, read_segmentation
from qualcl.data.synthetic import load_fundus_dataset
from qualcl.data.views import IMAGENET_MEAN, IMAGENET_STD
from qualcl.recipes.local_discrimination.config import DataConfig

__all__ = ["LDData", "SegmentationDataset", "SegmentationSet", "dataset_tasks", "load_ld_data", "normalised"]

#: Masks of the synthetic set the transfer segments (vessels, optic disc, hard exudates: the code's retinal tasks).
SYNTHETIC_TASKS = ("vessels", "OD", "EX")
MEAN, STD = (torch.tensor(values).view(-1, 1, 1) for values in (IMAGENET_MEAN, IMAGENET_STD))


def normalised(images: Tensor) -> Tensor:
    """``(..., 3, S, S)`` uint8 images as the encoders' float input (ImageNet's normalisation, as the code's)."""
    return (images.float() / 255 - MEAN) / STD


class SegmentationSet(NamedTuple):
    """Images with their masks, quality levels and landmarks.

    Attributes:
        images: ``(N, 3, S, S)`` uint8.
        masks: Task → ``(N, S, S)`` bool.
        quality: ``(N,)`` quality index (0 = best).
        quality_names: Names of the quality indices.
        landmarks: Landmark → ``(N, 2)`` float ``(x, y)`` pixels (``{}`` where the dataset has none).
        names: Image names.
    """

    images: Tensor
    masks: dict[str, Tensor]
    quality: Tensor
    quality_names: tuple[str, ...]
    landmarks: dict[str, Tensor]
    names: list[str]

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.images.shape[0])

    def subset(self, index: Sequence[int]) -> SegmentationSet:
        """The rows ``index``."""
        at = torch.as_tensor(list(index), dtype=torch.long)
        return SegmentationSet(
            self.images[at],
            {k: v[at] for k, v in self.masks.items()},
            self.quality[at],
            self.quality_names,
            {k: v[at] for k, v in self.landmarks.items()},
            [self.names[i] for i in at.tolist()],
        )


class LDData(NamedTuple):
    """The run's data.

    Attributes:
        pretrain: ``(M, 3, S, S)`` uint8 unlabelled images (the training split).
        train: Labelled images of the transfer.
        val: Held-out labelled images (best epoch).
        test: Test images.
        priors: ``(P, S, S)`` bool shape-prior masks (synthetic vessel masks of the pre-training
            images; empty for real datasets).
        tasks: Masks the transfer segments.
    """

    pretrain: Tensor
    train: SegmentationSet
    val: SegmentationSet
    test: SegmentationSet
    priors: Tensor
    tasks: tuple[str, ...]


def dataset_tasks(dataset: str) -> tuple[str, ...]:
    """The masks a dataset has (:data:`SYNTHETIC_TASKS`, else the reader's list)."""
    return SYNTHETIC_TASKS if dataset == "synthetic" else SEGMENTATION_DATASETS[dataset]


def _read_mask(path: Path, size: int) -> Tensor:
    """A binary mask file as ``(size, size)`` bool (nearest-neighbour resize when its side differs)."""
    grey = open_image(path, "L")
    grey = grey if grey.size == (size, size) else grey.resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy(np.array(grey)) > 0


Splits = tuple[SegmentationSet, SegmentationSet, Tensor]


def _synthetic(config: DataConfig, root: Path, progress: ImageProgress) -> Splits:
    folder, size = load_fundus_dataset(root), config.image_size
    scale = size / int(folder.metadata.get("size", size))

    def table(positions: list[int]) -> SegmentationSet:
        records = [folder.records[i] for i in positions]
        paths = [root / r.get("image_path", f"images/{r['image']}") for r in records]
        images, _ = read_resized(paths, size, progress=progress)
        masks = {t: torch.stack([_read_mask(root / r["masks"][t], size) for r in records]) for t in SYNTHETIC_TASKS}
        points = {n: torch.tensor([r["landmarks"][n] for r in records], dtype=torch.float32) for n in ("disc", "fovea")}
        landmarks = {name: xy * scale for name, xy in points.items()}
        quality = torch.tensor([int(r["quality"]) for r in records], dtype=torch.long)
        return SegmentationSet(images, masks, quality, FUNDUS_QUALITY, landmarks, [r["image"] for r in records])

    train, test = table(folder.splits["train"]), table(folder.splits["test"])
    return train, test, train.masks["vessels"]


def _real(config: DataConfig, root: Path, progress: ImageProgress) -> Splits:
    dataset, tasks = config.dataset, SEGMENTATION_DATASETS[config.dataset]

    def table(records: Sequence[object]) -> SegmentationSet:
        iterator = progress(list(records)) if progress is not None else records  # type: ignore[arg-type]
        samples = [load_segmentation_sample(r, config.image_size) for r in iterator]  # type: ignore[arg-type]
        images = torch.stack([s.image for s in samples])
        masks = {t: torch.stack([s.masks[t] for s in samples]) for t in tasks if all(t in s.masks for s in samples)}
        missing = [t for t in tasks if t not in masks]
        if missing:
            raise ValueError(f"{dataset}: some images lack the {missing} mask(s); every image needs each task's mask")
        names = [r.name for r in records]  # type: ignore[attr-defined]
        return SegmentationSet(images, masks, torch.zeros(len(samples), dtype=torch.long), UNRATED, {}, names)

    if dataset in ("drive", "idrid", "drishti"):
        train = table(read_segmentation(dataset, root, "train"))
        test = table(read_segmentation(dataset, root, "test"))
    else:  # no official split: a seeded split of the images
        records = read_segmentation(dataset, root)
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(config.seed)).tolist()
        cut = max(1, round(len(records) * config.test_fraction))
        test = table([records[i] for i in sorted(order[:cut])])
        train = table([records[i] for i in sorted(order[cut:])])
    return train, test, torch.zeros(0, config.image_size, config.image_size, dtype=torch.bool)


def load_ld_data(
    config: DataConfig, root: Path, tasks: Sequence[str] = (), *, progress: ImageProgress = None
) -> LDData:
    """Read the dataset: pre-training images, labelled train / val, test, shape priors.

    The pre-training images are the whole training split, unlabelled; the transfer's labelled
    images are the first ``data.labelled`` of a seeded permutation of the training split (synthetic:
    of its patients, both eyes together), of which ``val_fraction`` is held out.

    Raises:
        ValueError: An unknown task, or too few images for the splits.
    """
    train, test, priors = (_synthetic if config.dataset == "synthetic" else _real)(config, root, progress)
    available = dataset_tasks(config.dataset)
    chosen = tuple(tasks) or available
    unknown = [t for t in chosen if t not in available]
    if unknown:
        raise ValueError(f"transfer.tasks {unknown} are not masks of {config.dataset}; choose from {list(available)}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed + 1)).tolist()
    if config.dataset == "synthetic":  # by patient: both eyes on one side
        patients = [train.names[i].split("_")[0] for i in range(len(train))]
        keep, held = patient_split(patients, config.val_fraction, config.seed)
        labelled = sorted(keep, key=order.index)[: config.labelled or None]
    else:
        rows = order[: config.labelled or None]
        cut = max(1, round(len(rows) * config.val_fraction))
        held, labelled = rows[:cut], rows[cut:]
    wanted = max(1, round(len(labelled) * config.val_fraction / (1 - config.val_fraction)))
    val = sorted(held, key=order.index)[:wanted]
    if len(labelled) < 2 or len(val) < 1 or len(test) < 1:
        raise ValueError(
            f"{config.dataset}: {len(labelled)} labelled, {len(val)} validation and {len(test)} test images; "
            "the transfer needs at least 2, 1 and 1 (more images, or a larger data.labelled)"
        )
    return LDData(train.images, train.subset(labelled), train.subset(val), test, priors, chosen)


class SegmentationDataset(Dataset[tuple[Tensor, Tensor, int]]):
    """Item ``i``: :func:`normalised` image, its ``(1, S, S)`` float mask of one task, quality index.

    With ``train`` the image and mask get the same random flips and quarter turn, drawn from the
    item's generator ``(seed, epoch, index)`` (the code: flips and a rotation in ``[−180°, 180°]``).
    """

    def __init__(self, data: SegmentationSet, task: str, *, train: bool = False, seed: int = 0) -> None:
        if task not in data.masks:
            raise ValueError(f"no {task!r} masks; available: {sorted(data.masks)}")
        self.data, self.task, self.train, self.seed, self.epoch = data, task, train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations for ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image, mask = normalised(self.data.images[index]), self.data.masks[self.task][index][None].float()
        if self.train:
            g = item_generator(self.seed, self.epoch, index)
            flips, turns = torch.rand(2, generator=g), int(torch.randint(4, (), generator=g))
            both = torch.cat([image, mask])
            if flips[0] < 0.5:
                both = both.flip(-1)
            if flips[1] < 0.5:
                both = both.flip(-2)
            both = torch.rot90(both, turns, dims=(-2, -1))
            image, mask = both[:3], both[3:]
        return image, mask, int(self.data.quality[index])
