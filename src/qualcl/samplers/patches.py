"""Patch windows for CoMCL: lesion-centred windows (Omega) and random crops in the fundus (RandC)."""

from __future__ import annotations

import torch
from torch import Tensor

from qualcl._validation import check_finite, check_int, check_number

__all__ = ["LesionPatchSampler", "RandomPatchSampler", "Window"]

#: A window as ``(x, y)`` of its top-left corner; its size is the sampler's ``patch_size``.
Window = tuple[int, int]


def _check_size(name: str, value: int) -> int:
    return check_int(name, value)


def _uniform(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


class LesionPatchSampler:
    """Two random ``patch_size`` windows that both fully contain the same lesion box (CoMCL's Omega).

    Boxes are ``(x1, y1, x2, y2)`` pixel corners (``x2``, ``y2`` exclusive). Only boxes with a
    detector score above ``min_score`` that fit in a window and lie ``margin`` pixels from the
    border are used (the box filter of Lesion-based CL's ``build_dataset.py``). Each call draws one
    usable box uniformly, then each window's offset uniformly among those keeping the box inside
    the window and the window inside the image; the two windows form a positive pair.

    Args:
        patch_size: Window side ``P`` (CoMCL: 128 on 512-px images).
        min_score: Detector confidence threshold (CoMCL releases use 0.8 / 0.9).
        margin: Minimum distance of a usable box from the image border.

    Examples:
        >>> import torch
        >>> sampler = LesionPatchSampler(patch_size=32)
        >>> g = torch.Generator().manual_seed(0)
        >>> (x, y), _ = sampler.sample(torch.tensor([[40, 50, 48, 60]]), (128, 128), generator=g)
        >>> x <= 40 and x + 32 >= 48 and y <= 50 and y + 32 >= 60
        True

    Reference:
        CoMCL (Hou et al., MICCAI 2024), Sec. 2.1; Huang et al., "Lesion-based Contrastive Learning", MICCAI 2021.
    """

    def __init__(self, patch_size: int, *, min_score: float = 0.5, margin: int = 0) -> None:
        self.patch_size = _check_size("patch_size", patch_size)
        self.min_score = check_number("min_score", min_score)
        self.margin = check_int("margin", margin, minimum=0)

    def usable(self, boxes: Tensor, image_size: tuple[int, int], scores: Tensor | None = None) -> Tensor:
        """Bool ``(K,)`` mask of the boxes a window can be built around.

        Args:
            boxes: ``(K, 4)`` boxes ``(x1, y1, x2, y2)``.
            image_size: ``(H, W)``.
            scores: ``(K,)`` detector scores, or ``None`` for ground-truth boxes (all usable).
        """
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape (K, 4), got {tuple(getattr(boxes, 'shape', ()))}")
        check_finite("boxes", boxes)
        h, w = image_size
        x1, y1, x2, y2 = boxes.unbind(dim=1)
        ok = (x2 > x1) & (y2 > y1)
        ok &= (x2 - x1 <= self.patch_size) & (y2 - y1 <= self.patch_size)
        ok &= (x1 >= self.margin) & (y1 >= self.margin) & (x2 <= w - self.margin) & (y2 <= h - self.margin)
        if scores is not None:
            if scores.shape != boxes.shape[:1]:
                raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
            check_finite("scores", scores)
            ok &= scores > self.min_score
        return ok

    def window(self, box: Tensor, image_size: tuple[int, int], *, generator: torch.Generator | None = None) -> Window:
        """One window fully containing ``box`` and inside the image."""
        h, w = image_size
        p = self.patch_size
        if h < p or w < p:
            raise ValueError(f"image_size {image_size} is smaller than patch_size {p}")
        x1, y1, x2, y2 = (int(v) for v in box.tolist())
        if x2 - x1 > p or y2 - y1 > p:
            raise ValueError(f"box {box.tolist()} does not fit in a {p}x{p} window")
        x = _uniform(max(0, x2 - p), min(x1, w - p), generator)
        y = _uniform(max(0, y2 - p), min(y1, h - p), generator)
        return x, y

    def sample(
        self,
        boxes: Tensor,
        image_size: tuple[int, int],
        scores: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Window, Window]:
        """Draw a usable box and two windows around it (a positive pair).

        Raises:
            ValueError: No box is usable (the caller should fall back, e.g. to a random crop).
        """
        candidates = torch.nonzero(self.usable(boxes, image_size, scores)).flatten()
        if candidates.numel() == 0:
            raise ValueError("no usable lesion box: none passes the score, size and margin filters")
        box = boxes[candidates[_uniform(0, candidates.numel() - 1, generator)]]
        return (
            self.window(box, image_size, generator=generator),
            self.window(box, image_size, generator=generator),
        )


class RandomPatchSampler:
    """A uniform random ``patch_size`` window whose centre lies inside a foreground mask (CoMCL's RandC).

    Args:
        patch_size: Window side ``P``.

    Examples:
        >>> import torch
        >>> mask = torch.zeros(64, 64, dtype=torch.bool); mask[16:48, 16:48] = True
        >>> x, y = RandomPatchSampler(16).sample(mask, generator=torch.Generator().manual_seed(0))
        >>> bool(mask[y + 8, x + 8])
        True

    Reference:
        CoMCL (Hou et al., MICCAI 2024), Sec. 2.1: healthy patches are random crops.
    """

    def __init__(self, patch_size: int) -> None:
        self.patch_size = _check_size("patch_size", patch_size)

    def sample(self, mask: Tensor, *, generator: torch.Generator | None = None) -> Window:
        """A window inside the image whose centre pixel is foreground in ``(H, W)`` bool ``mask``."""
        if mask.ndim != 2 or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a (H, W) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
        h, w = mask.shape
        p = self.patch_size
        if h < p or w < p:
            raise ValueError(f"mask of size {(h, w)} is smaller than patch_size {p}")
        centres = mask[p // 2 : h - p + p // 2 + 1, p // 2 : w - p + p // 2 + 1]
        ys, xs = torch.nonzero(centres, as_tuple=True)
        if ys.numel() == 0:
            raise ValueError("mask has no foreground pixel that can be a window centre")
        pick = _uniform(0, ys.numel() - 1, generator)
        return int(xs[pick]), int(ys[pick])
