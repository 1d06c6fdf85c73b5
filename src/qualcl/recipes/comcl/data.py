"""CoMCL data: fundus or chest X-ray image tables, patch-pair and grading datasets, test-time degradation."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from qualcl.data.augment import ColorJitterSpec, apply_color_jitter, item_generator
from qualcl.data.levels import LEVEL_NAMES, LOW_QUALITY, split_levels
from qualcl.data.loading import load_fundus_table, read_resized
from qualcl.data.readers import (
    CHESTXRAY8_FINDINGS,
    FundusRecord,
    read_eyeq,
    read_nih_boxes,
    read_nih_cxr14,
    simulate_low_dose,
)
from qualcl.data.readers._files import read_csv_rows
from qualcl.data.table import ImageTable
from qualcl.samplers import LesionPatchSampler, RandomPatchSampler

__all__ = [
    "BINARY_LEVELS",
    "CXR_CLASSES",
    "EpochDataset",
    "GradingDataset",
    "PatchAugmentation",
    "PatchPairDataset",
    "degrade_to_ratio",
    "image_levels",
    "level_names",
    "load_eyeq_layout",
    "load_nih_layout",
    "low_dose_tensor",
    "low_quality",
]

T = TypeVar("T")
#: ``(mean, std)`` per modality for [0, 1] RGB inputs: fundus as CoMCL's code (``data.py``); grey chest
#: radiographs replicated to three channels, centred with a unit-ish spread.
NORMALIZATION = {
    "fundus": ((0.4258, 0.2974, 0.2129), (0.2767, 0.2024, 0.1686)),
    "cxr": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
#: CoMCL's chest X-ray classes (a decision, docs/comcl.md "Chest X-ray"): "healthy" = No Finding (class 0, the
#: H levels), then the eight ChestX-ray8 findings; images with a single finding among them.
CXR_CLASSES = ("No Finding", *CHESTXRAY8_FINDINGS)
#: The levels of CoMCL "w/o multi-level": lesion (ids 0, 1 of :data:`~qualcl.data.levels.LEVEL_NAMES`) and healthy.
BINARY_LEVELS = ("lesion", "healthy")
#: Whose low-quality codes CoMCL uses (:data:`qualcl.data.levels.LOW_QUALITY`): EyeQ's Usable and Reject,
#: which the synthetic set shares; a chest X-ray's code 1 (LQ, :func:`load_nih_layout`) is among them.
QUALITY_CODES = "eyeq"


def level_names(pairs: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The levels ``pairs`` name: :data:`~qualcl.data.levels.LEVEL_NAMES`, or :data:`BINARY_LEVELS` for lesion/healthy.

    Raises:
        ValueError: A name outside both, or names of both.

    Examples:
        >>> level_names([("L", "LQ_L")]), level_names([("lesion", "healthy")])
        (('L', 'LQ_L', 'H', 'LQ_H'), ('lesion', 'healthy'))
    """
    named = {name for pair in pairs for name in pair}
    if not named <= {*LEVEL_NAMES, *BINARY_LEVELS}:
        known = sorted({*LEVEL_NAMES, *BINARY_LEVELS})
        raise ValueError(f"pretrain.pairs must name levels among {known}, got {[list(p) for p in pairs]}")
    if named & set(BINARY_LEVELS) and not named <= set(BINARY_LEVELS):
        raise ValueError("pretrain.pairs must use either the four levels or lesion/healthy, not both")
    return BINARY_LEVELS if named and named <= set(BINARY_LEVELS) else LEVEL_NAMES


def low_quality(data: ImageTable) -> Tensor:
    """``(N,)`` bool: the images CoMCL counts as low quality (:data:`QUALITY_CODES`)."""
    return torch.isin(data.quality, torch.tensor(sorted(LOW_QUALITY[QUALITY_CODES])))


def image_levels(data: ImageTable, names: Sequence[str] = LEVEL_NAMES) -> Tensor:
    """``(N,)`` level id of each image into ``names``: CoMCL's four levels, or lesion (0) / healthy (1)."""
    four = split_levels(data.label, data.quality, QUALITY_CODES)
    return (four >= 2).long() if tuple(names) == BINARY_LEVELS else four


def load_eyeq_layout(root: Path, split: str, size: int, *, with_truth_boxes: bool) -> ImageTable:
    """Images of an EyeQ-format folder (real EyeQ, or the synthetic set, whose ``ground_truth.json`` has boxes)."""
    records: Sequence[FundusRecord] = read_eyeq(root, split)
    if not with_truth_boxes:
        return load_fundus_table(records, size)
    truth = root / "ground_truth.json"
    by_name = {Path(r["image"]).name: r for r in json.loads(truth.read_text())["images"]}
    boxes = []
    for record in records:
        if record.image.name not in by_name:
            raise ValueError(f"{truth} has no record for {record.image.name}")
        found = [b[:4] for b in by_name[record.image.name]["boxes"] if b[4] in ("MA", "HE", "EX", "NV")]
        boxes.append(torch.tensor(found, dtype=torch.float64).view(-1, 4))
    return load_fundus_table(records, size, boxes)


def low_dose_tensor(images: Tensor, factor: float = 4.0) -> Tensor:
    """Simulated low-dose copies of ``(N, 3, S, S)`` uint8 grey images (bicubic down- and up-sampling).

    MKCNet's CXR-IQAD reading (:mod:`qualcl.data.readers.low_dose`) at the network's input size:
    factor 4 keeps a quarter of the resolution.

    Examples:
        >>> import torch
        >>> out = low_dose_tensor(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
        >>> out.shape, out.dtype
        (torch.Size([2, 3, 32, 32]), torch.uint8)
    """
    out = []
    for image in images:
        grey = Image.fromarray(image[0].numpy())
        low = torch.from_numpy(np.asarray(simulate_low_dose(grey, factor)).copy())
        out.append(low.unsqueeze(0).expand(3, -1, -1))
    return torch.stack(out) if out else images.clone()


def _quality_sidecar(path: Path, names: Sequence[str]) -> Tensor:
    """The 0 (high) / 1 (low) quality codes of ``names`` in a ``quality.csv``."""
    rows = read_csv_rows(path, ["Image Index", "Quality"])
    codes = {"0": 0, "1": 1, "high": 0, "low": 1, "hq": 0, "lq": 1}
    table = {}
    for row in rows:
        value = row["Quality"].lower()
        if value not in codes:
            raise ValueError(f"{path}:{row['__line__']}: Quality must be 0/1 or high/low, got {row['Quality']!r}")
        table[row["Image Index"]] = codes[value]
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"{path} has no Quality for {len(missing)} image(s), e.g. {missing[:3]}")
    return torch.tensor([table[n] for n in names], dtype=torch.long)


def load_nih_layout(
    root: Path,
    split: str,
    size: int,
    *,
    lq_ratio: float = 0.432,
    seed: int = 0,
    max_images: int | None = None,
    progress: Callable[[Sequence[Path]], Sequence[Path]] | None = None,
) -> ImageTable:
    """NIH ChestX-ray14 images as CoMCL's four-level data (qualcl's decisions, docs/comcl.md "Chest X-ray").

    * **Classes**: :data:`CXR_CLASSES` — No Finding (0, the *healthy* levels) and the eight ChestX-ray8
      findings; images with several findings, or one outside the eight, are left out (the paper evaluates
      "multi-class" diagnosis with Kappa / ACC on 8,573 + 7,007 such images, selection unstated).
    * **Quality**: NIH has no quality labels. A ``quality.csv`` (``Image Index,Quality`` with 0/1 or
      high/low) in ``root`` is used when present; otherwise a seeded ``lq_ratio`` of the images (paper: 43.2 %)
      is marked low quality and degraded by simulated low dose (:func:`low_dose_tensor`).
    * **Lesion boxes**: the radiologists' boxes of ``BBox_List_2017.csv`` when the file is there (880
      images); the other diseased images give random crops of the central field (``fov``, the middle
      80 % of each side), as healthy images do.

    Args:
        root: Dataset folder (``Data_Entry_2017*.csv``, split lists, images).
        split: ``"train"`` (``train_val_list.txt``) or ``"test"`` (``test_list.txt``).
        size: Output side.
        lq_ratio: Fraction marked low quality when there is no ``quality.csv``.
        seed: Seed of the subset (at most ``max_images`` images) and of the simulated quality.
        max_images: Keep a seeded subset of at most this many images.
        progress: Optional wrapper (e.g. ``tqdm``) around the image loading.

    Raises:
        FileNotFoundError: A metadata file or an image is missing (named).
        ValueError: No image qualifies, or ``quality.csv`` is malformed or incomplete.
    """
    splits = {"train": "train_val", "test": "test"}
    if split not in splits:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 <= lq_ratio <= 1.0:
        raise ValueError(f"lq_ratio must lie in [0, 1], got {lq_ratio}")
    base = Path(root)
    chosen = [
        (record, CXR_CLASSES.index(record.findings[0]) if record.findings else 0)
        for record in read_nih_cxr14(base, splits[split])
        if not record.findings or (len(record.findings) == 1 and record.findings[0] in CHESTXRAY8_FINDINGS)
    ]
    if not chosen:
        raise ValueError(f"{base}: no {split} image has no finding or a single one of {CHESTXRAY8_FINDINGS}")
    generator = torch.Generator().manual_seed(seed * 2 + (split == "test"))
    if max_images is not None and len(chosen) > max_images:
        keep = sorted(torch.randperm(len(chosen), generator=generator)[:max_images].tolist())
        chosen = [chosen[i] for i in keep]
    records = [r for r, _ in chosen]
    names = [r.image.name for r in records]
    truth_boxes = read_nih_boxes(base) if (base / "BBox_List_2017.csv").is_file() else {}
    boxes = [torch.tensor([b[:4] for b in truth_boxes.get(n, [])], dtype=torch.float64).view(-1, 4) for n in names]
    images, scaled = read_resized([r.image for r in records], size, boxes, progress)
    sidecar = base / "quality.csv"
    if sidecar.is_file():
        quality = _quality_sidecar(sidecar, names)
    else:
        quality = torch.zeros(len(records), dtype=torch.long)
        low = torch.randperm(len(records), generator=generator)[: round(lq_ratio * len(records))]
        quality[low] = 1
        images[low] = low_dose_tensor(images[low])
    margin = round(0.1 * size)
    fov = torch.zeros(len(records), size, size, dtype=torch.bool)
    fov[:, margin : size - margin, margin : size - margin] = True
    return ImageTable(
        images=images,
        label=torch.tensor([c for _, c in chosen], dtype=torch.long),
        quality=quality,
        quality_names=("HQ", "LQ"),
        label_names=CXR_CLASSES,
        modality="cxr",
        path=[str(r.image) for r in records],
        patient=[r.patient_id for r in records],
        boxes=scaled,
        fov=fov,
    )


def _normalization(modality: str) -> tuple[Tensor, Tensor]:
    """``(3, 1, 1)`` mean and std of ``modality``'s images."""
    if modality not in NORMALIZATION:
        raise ValueError(f"modality must be one of {sorted(NORMALIZATION)}, got {modality!r}")
    mean, std = NORMALIZATION[modality]
    return torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)


class EpochDataset(Dataset[T]):
    """A dataset whose item ``i`` draws from ``item_generator(seed, epoch, i)``: a resumed epoch draws the same."""

    seed = 0
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw anew for ``epoch``."""
        self.epoch = epoch

    def generator(self, index: int) -> torch.Generator:
        """The generator of item ``index`` in the current epoch."""
        return item_generator(self.seed, self.epoch, index)


class PatchAugmentation:
    """CoMCL's patch augmentation with every draw from an explicit generator (reproducible, resumable).

    ``"paper"`` (CoMCL's code, ``data.py::data_transforms``, made for 128-px patches): flips,
    RandomResizedCrop(scale 0.8–1, ratio 0.8–1.25), RandomAffine(±180°), then ColorJitter(0.4, 0.4,
    0.4, 0.1) and RandomGrayscale(0.2). ``"light"`` (the CPU presets' 24–32-px patches, where the
    paper's version leaves the two views too little shared content for a from-scratch encoder to
    learn in a few hundred steps): flips, a quarter turn, ColorJitter(0.2, 0.2, 0.2, 0.02). The
    geometric part runs per patch in the dataset (:meth:`geometry`); the photometric part is drawn
    there too (:meth:`color_params`) but applied to the whole batch on its device (:meth:`normalize`),
    which makes a CPU step cheap. Unlike the code's single ``Compose``, colour comes after geometry
    (they commute with flips and quarter turns; with the paper's crop and rotation only the black
    corners of a rotated patch are jittered differently).

    Args:
        patch_size: Output side.
        strength: ``"paper"`` or ``"light"``.
        modality: ``"fundus"`` or ``"cxr"`` (normalisation).
    """

    def __init__(self, patch_size: int, strength: str = "paper", modality: str = "fundus") -> None:
        if strength not in ("paper", "light"):
            raise ValueError(f"augmentation must be 'paper' or 'light', got {strength!r}")
        self.patch_size, self.strength = patch_size, strength
        self.mean, self.std = _normalization(modality)
        paper = strength == "paper"
        self.color = (
            ColorJitterSpec(0.4, 0.4, 0.4, 0.1, grayscale=0.2) if paper else ColorJitterSpec(0.2, 0.2, 0.2, 0.02)
        )

    def geometry(self, patch: Tensor, generator: torch.Generator) -> Tensor:
        """The geometric augmentation of one ``(3, S, S)`` uint8 patch."""
        flips = torch.rand(2, generator=generator)
        if flips[0] < 0.5:
            patch = patch.flip(-1)
        if flips[1] < 0.5:
            patch = patch.flip(-2)
        if self.strength == "light":
            turns = int(torch.randint(4, (), generator=generator))
            return torch.rot90(patch, turns, dims=(-2, -1))
        size = self.patch_size
        area = size * size * (0.8 + 0.2 * float(torch.rand((), generator=generator)))
        log_ratio = torch.empty(()).uniform_(float(np.log(0.8)), float(np.log(1.25)), generator=generator)
        ratio = float(torch.exp(log_ratio))
        w = min(size, max(1, round((area * ratio) ** 0.5)))
        h = min(size, max(1, round((area / ratio) ** 0.5)))
        top = int(torch.randint(size - h + 1, (), generator=generator))
        left = int(torch.randint(size - w + 1, (), generator=generator))
        patch = TF.resized_crop(patch, top, left, h, w, [size, size], antialias=True)
        angle = -180.0 + 360.0 * float(torch.rand((), generator=generator))
        rotated: Tensor = TF.affine(patch, angle=angle, translate=[0, 0], scale=1.0, shear=[0.0, 0.0])
        return rotated

    def color_params(self, generator: torch.Generator) -> Tensor:
        """``(9,)`` ColorJitter / RandomGrayscale parameters of one patch."""
        return self.color.sample(generator)

    def normalize(self, patches: Tensor, params: Tensor) -> Tensor:
        """``(N, 3, S, S)`` uint8 patches and their ``(N, 9)`` parameters → jittered, normalised float32."""
        images = apply_color_jitter(patches.to(torch.float32) / 255, params)
        return (images - self.mean.to(images.device)) / self.std.to(images.device)


class PatchPairDataset(EpochDataset[tuple[Tensor, Tensor, int, Tensor, Tensor]]):
    """Item ``i``: two patches of image ``i`` (uint8, geometric augmentation done), its level, their colour draws.

    Lesion levels draw two windows around the same lesion box (:class:`LesionPatchSampler`);
    healthy levels, or lesion images without a usable box, draw one random window inside the
    field of view (:class:`RandomPatchSampler`) viewed twice. With ``binary_levels`` the level id
    is 0 for lesion and 1 for healthy images (CoMCL "w/o multi-level"). Every draw comes from the
    item's generator ``(seed, epoch, index)``; ``ContrastivePretraining`` applies the colour part per
    batch, on its device (:meth:`PatchAugmentation.normalize`).

    Args:
        data: The images.
        patch_size: Window side.
        seed: Seed of the draws.
        binary_levels: Use lesion/healthy ids instead of the four levels.
        augmentation: ``"paper"`` or ``"light"`` (see :class:`PatchAugmentation`).
    """

    def __init__(
        self, data: ImageTable, patch_size: int, seed: int, *, binary_levels: bool = False, augmentation: str = "paper"
    ) -> None:
        self.data, self.patch_size, self.seed = data, patch_size, seed
        self.levels = image_levels(data, BINARY_LEVELS if binary_levels else LEVEL_NAMES)
        self.lesion, self.random = LesionPatchSampler(patch_size), RandomPatchSampler(patch_size)
        self.augment = PatchAugmentation(patch_size, augmentation, data.modality)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int, Tensor, Tensor]:
        g = self.generator(index)
        image = self.data.images[index]
        size = (image.shape[1], image.shape[2])
        p = self.patch_size
        boxes = self.data.boxes[index] if self.data.boxes is not None else torch.zeros(0, 4, dtype=torch.long)
        if self.data.label[index] > 0 and bool(self.lesion.usable(boxes, size).any()):
            (x1, y1), (x2, y2) = self.lesion.sample(boxes, size, generator=g)
        else:
            assert self.data.fov is not None
            x1, y1 = self.random.sample(self.data.fov[index], generator=g)
            x2, y2 = x1, y1
        first = self.augment.geometry(image[:, y1 : y1 + p, x1 : x1 + p], g)
        second = self.augment.geometry(image[:, y2 : y2 + p, x2 : x2 + p], g)
        return first, second, int(self.levels[index]), self.augment.color_params(g), self.augment.color_params(g)


class GradingDataset(EpochDataset[tuple[Tensor, int, int]]):
    """Item ``i``: normalised image, class id, quality code; when ``train``, flipped at random.

    Fundus images flip both ways, X-rays only left-right (a chest radiograph upside down is not a
    plausible image; a mirrored one nearly is). The flips come from the item's generator
    ``(seed, epoch, index)``.
    """

    def __init__(self, data: ImageTable, *, train: bool, seed: int = 0) -> None:
        self.data, self.train, self.seed = data, train, seed
        self.vertical = data.modality != "cxr"
        self.mean, self.std = _normalization(data.modality)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        image = self.data.images[index]
        if self.train:
            flips = torch.rand(2, generator=self.generator(index))
            if flips[0] < 0.5:
                image = image.flip(-1)
            if self.vertical and flips[1] < 0.5:
                image = image.flip(-2)
        normalised = (image.to(torch.float32) / 255 - self.mean) / self.std
        return normalised, int(self.data.label[index]), int(self.data.quality[index])


def degrade_to_ratio(data: ImageTable, ratio: float, seed: int) -> ImageTable:
    """A copy of ``data`` whose low-quality fraction is raised to ``ratio`` in ``[0, 1]`` (CoMCL's 70 % / 100 % sets).

    :func:`qualcl.data.degrade.raise_low_quality` from ``seed``: fundus images are degraded to Usable or
    Reject (alternately); X-rays get simulated low dose (:func:`low_dose_tensor`) and quality 1.
    """
    from qualcl.data.degrade import raise_low_quality

    if data.modality == "cxr":
        return raise_low_quality(data, ratio, seed, degrade=lambda images, levels, generator: low_dose_tensor(images))
    return raise_low_quality(data, ratio, seed)
