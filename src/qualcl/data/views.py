"""Local discrimination's views: two images, four photometric views, a mixup image, recorded flips and quarter turns.

Each item draws two random images. Each image gets one geometric augmentation shared by its two
views (flips, a rotation in ``[−180°, 180°]``, a resized crop of scale 0.9–1); each view then gets
its own small rotation (±2°) and colour draw, and the second views a random 180° turn (the code's
``torch.flip`` over both axes, which is a rotation, not a mirror) and ``k`` quarter turns, recorded
so that :func:`realign_grid` can bring their patch grids back onto the first views'. The colour
part runs per batch on the batch's device (:meth:`LocalDiscriminationViews.collate` then
:meth:`LocalDiscriminationViews.assemble`), where the mixup image ``w·x1_1 + (1 − w)·x2_1``
(``w ~ U(0.2, 0.8)``) is formed after the colour jitter and before normalisation, as in the code.
Every draw comes from the item's generator ``(seed, epoch, index)``, so an interrupted run resumes
with the same views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import Dataset

from qualcl._validation import check_feature_map, check_int, check_number
from qualcl.data.augment import ColorJitterSpec, apply_color_jitter, item_generator

__all__ = ["LocalBatch", "LocalDiscriminationViews", "LocalViews", "realign_grid"]

#: ImageNet statistics, the code's normalisation of retinal images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LocalViews(NamedTuple):
    """One item: four uint8 views and the draws still to apply.

    Attributes:
        views: ``(4, 3, S, S)`` uint8 in the order ``x1_1, x2_1, x1_2, x2_2`` (the code's batch order);
            the second views are already turned.
        color: ``(4, 9)`` colour draws of the views (:meth:`qualcl.data.augment.ColorJitterSpec.sample`).
        weight: Mixup weight ``w`` of ``x1_1`` (a float tensor).
        flip: ``(2,)`` bool, whether ``x1_2`` / ``x2_2`` were turned by 180°.
        rot: ``(2,)`` int64, their quarter turns ``k`` (``torch.rot90(·, k)`` after the flip).
    """

    views: Tensor
    color: Tensor
    weight: Tensor
    flip: Tensor
    rot: Tensor


class LocalBatch(NamedTuple):
    """A batch ready for the network.

    Attributes:
        images: ``(5B, 3, S, S)`` normalised float32: ``[x1_1, x2_1, x1_2, x2_2, x3]``, ``B`` each.
        weight: ``(B,)`` mixup weights.
        flip: ``(B, 2)`` bool 180° turns of ``x1_2``, ``x2_2``.
        rot: ``(B, 2)`` int64 quarter turns of ``x1_2``, ``x2_2``.
    """

    images: Tensor
    weight: Tensor
    flip: Tensor
    rot: Tensor


class LocalDiscriminationViews(Dataset[LocalViews]):
    """A dataset of local-discrimination items drawn from ``images`` (``length`` items per epoch).

    Args:
        images: ``(N, 3, H, W)`` uint8 images (e.g. an ``ImageTable``'s), ``N >= 1``.
        size: Side ``S`` of the views (the code: 448 from 512-px images).
        length: Items per epoch (the code: ``1000·B``).
        seed: Seed of every draw (mixed with the epoch and the index).
        crop_scale: Area range of the resized crop.
        rotation: Maximum angle (degrees) of the per-image rotation.
        view_rotation: Maximum angle of each view's own rotation.
        color: Colour jitter and grey probability of each view (the code: 0.4, 0.4, 0.4, 0.02, grey 0.2).
        flip: Draw the 180° turn of the second views.
        rot90: Draw the quarter turns of the second views.
        mixup: Range of the mixup weight ``w``.
        mean: Per-channel normalisation mean (ImageNet's, as the code for fundus images).
        std: Per-channel normalisation std.

    Examples:
        >>> import torch
        >>> from torch.utils.data import DataLoader
        >>> data = LocalDiscriminationViews(torch.randint(0, 255, (3, 3, 40, 40), dtype=torch.uint8), size=32, length=4)
        >>> views = data[0]
        >>> views.views.shape, views.color.shape
        (torch.Size([4, 3, 32, 32]), torch.Size([4, 9]))
        >>> loader = DataLoader(data, batch_size=2, collate_fn=data.collate)
        >>> batch = data.assemble(next(iter(loader)))
        >>> batch.images.shape, batch.flip.shape
        (torch.Size([10, 3, 32, 32]), torch.Size([2, 2]))

    Reference:
        Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023
        (``my_utils.py::MyDataset`` and the transforms of ``step1_train_pd_mixup.py``).
    """

    def __init__(
        self,
        images: Tensor,
        size: int,
        length: int,
        *,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.9, 1.0),
        rotation: float = 180.0,
        view_rotation: float = 2.0,
        color: ColorJitterSpec | None = None,
        flip: bool = True,
        rot90: bool = True,
        mixup: tuple[float, float] = (0.2, 0.8),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            dtype = images.dtype if isinstance(images, Tensor) else ""
            raise ValueError(f"images must be (N, 3, H, W) uint8 RGB, got {dtype} {shape}")
        if images.shape[0] == 0:
            raise ValueError("images is empty: at least one image is needed")
        self.images = images
        self.size = check_int("size", size)
        self.length = check_int("length", length)
        self.seed = int(seed)
        low, high = (check_number("crop_scale", v, minimum=0.0, maximum=1.0) for v in crop_scale)
        if not 0 < low <= high:
            raise ValueError(f"crop_scale must be 0 < low <= high <= 1, got {crop_scale}")
        self.crop_scale = (low, high)
        self.rotation = check_number("rotation", rotation, minimum=0.0, maximum=180.0)
        self.view_rotation = check_number("view_rotation", view_rotation, minimum=0.0, maximum=180.0)
        self.color = ColorJitterSpec(0.4, 0.4, 0.4, 0.02, grayscale=0.2) if color is None else color
        self.flip, self.rot90 = bool(flip), bool(rot90)
        w_low, w_high = (check_number("mixup", v, minimum=0.0, maximum=1.0) for v in mixup)
        if w_low > w_high:
            raise ValueError(f"mixup must be a range low <= high in [0, 1], got {mixup}")
        self.mixup = (w_low, w_high)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 entries (std > 0), got {tuple(mean)} and {tuple(std)}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw new images and views for ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _uniform(self, g: torch.Generator, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))

    def _geometry(self, image: Tensor, g: torch.Generator) -> Tensor:
        flips = torch.rand(2, generator=g)
        if flips[0] < 0.5:
            image = image.flip(-1)
        if flips[1] < 0.5:
            image = image.flip(-2)
        if self.rotation:
            image = TF.rotate(image, self._uniform(g, -self.rotation, self.rotation))
        h, w = image.shape[-2:]
        area = h * w * self._uniform(g, *self.crop_scale)
        ratio = math.exp(self._uniform(g, math.log(3 / 4), math.log(4 / 3)))
        cw = min(w, max(1, round(math.sqrt(area * ratio))))
        ch = min(h, max(1, round(math.sqrt(area / ratio))))
        top = int(torch.randint(h - ch + 1, (), generator=g))
        left = int(torch.randint(w - cw + 1, (), generator=g))
        cropped: Tensor = TF.resized_crop(image, top, left, ch, cw, [self.size, self.size], antialias=True)
        return cropped

    def _view(self, image: Tensor, g: torch.Generator) -> Tensor:
        if not self.view_rotation:
            return image
        rotated: Tensor = TF.rotate(image, self._uniform(g, -self.view_rotation, self.view_rotation))
        return rotated

    def __getitem__(self, index: int) -> LocalViews:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        g = item_generator(self.seed, self.epoch, index)
        picks = torch.randint(len(self.images), (2,), generator=g).tolist()
        img1, img2 = (self._geometry(self.images[i], g) for i in picks)
        x11, x21, x12, x22 = self._view(img1, g), self._view(img2, g), self._view(img1, g), self._view(img2, g)
        flip = torch.rand(2, generator=g) < 0.5 if self.flip else torch.zeros(2, dtype=torch.bool)
        rot = torch.randint(4, (2,), generator=g) if self.rot90 else torch.zeros(2, dtype=torch.long)
        turned = []
        for view, f, k in zip((x12, x22), flip.tolist(), rot.tolist(), strict=True):
            if f:
                view = view.flip(-2, -1)
            turned.append(torch.rot90(view, k, dims=(-2, -1)) if k else view)
        color = torch.stack([self.color.sample(g) for _ in range(4)])
        weight = torch.tensor(self._uniform(g, *self.mixup), dtype=torch.float32)
        return LocalViews(torch.stack([x11, x21, *turned]), color, weight, flip, rot)

    @staticmethod
    def collate(items: Sequence[LocalViews]) -> LocalViews:
        """Stack items: ``views (B, 4, 3, S, S)``, ``color (B, 4, 9)``, ``weight (B,)``, ``flip``/``rot`` ``(B, 2)``."""
        return LocalViews(*(torch.stack([getattr(item, f) for item in items]) for f in LocalViews._fields))

    def assemble(self, batch: LocalViews, device: torch.device | str | None = None) -> LocalBatch:
        """Jitter, mix and normalise a collated batch on ``device``: ``[x1_1, x2_1, x1_2, x2_2, x3]``."""
        views = batch.views.to(device)
        b = views.shape[0]
        ordered = views.transpose(0, 1).reshape(4 * b, *views.shape[2:])  # view-major, as the code's torch.cat
        params = batch.color.transpose(0, 1).reshape(4 * b, -1)
        jittered = apply_color_jitter(ordered.to(torch.float32) / 255, params)
        w = batch.weight.to(jittered.device, torch.float32).view(-1, 1, 1, 1)
        mixed = w * jittered[:b] + (1 - w) * jittered[b : 2 * b]
        images = torch.cat([jittered, mixed])
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return LocalBatch((images - mean) / std, batch.weight.to(images.device), batch.flip, batch.rot)


def realign_grid(grid: Tensor, flip: Tensor, rot: Tensor) -> Tensor:
    """Undo each item's recorded 180° turn and quarter turns on its ``(D, h, w)`` grid.

    A view made as ``rot90(flip(x), k)`` has its grid brought back by ``flip(rot90(·, −k))``, so
    cell ``(r, c)`` of the result lies over the same image region as cell ``(r, c)`` of the
    untouched view (exactly, for grids that tile a square image evenly).

    Args:
        grid: ``(B, D, h, w)`` patch grids (or any maps) of the turned views, ``h == w`` when any ``k`` is odd.
        flip: ``(B,)`` bool, the 180° turns.
        rot: ``(B,)`` integer quarter turns ``k``.

    Returns:
        ``(B, D, h, w)`` realigned grids.

    Examples:
        >>> import torch
        >>> x = torch.arange(8.0).view(2, 1, 2, 2)
        >>> turned = torch.stack([torch.rot90(x[0].flip(-2, -1), 1, (-2, -1)), x[1]])
        >>> torch.equal(realign_grid(turned, torch.tensor([True, False]), torch.tensor([1, 0])), x)
        True
    """
    check_feature_map("grid", grid)
    b = grid.shape[0]
    if not isinstance(flip, Tensor) or flip.shape != (b,):
        raise ValueError(f"flip must be a ({b},) tensor, got {getattr(flip, 'shape', type(flip).__name__)}")
    if not isinstance(rot, Tensor) or rot.shape != (b,) or rot.is_floating_point():
        raise ValueError(f"rot must be a ({b},) integer tensor, got {getattr(rot, 'shape', type(rot).__name__)}")
    ks = (rot.long() % 4).tolist()
    if grid.shape[2] != grid.shape[3] and any(k % 2 for k in ks):
        raise ValueError(f"an odd number of quarter turns needs square grids, got {tuple(grid.shape[2:])}")
    out = []
    for item, f, k in zip(grid.unbind(0), flip.bool().tolist(), ks, strict=True):
        if k:
            item = torch.rot90(item, -k, dims=(-2, -1))
        if f:
            item = item.flip(-2, -1)
        out.append(item)
    return torch.stack(out)
