"""``ImageTable``: the one in-memory table of labelled, quality-graded images every recipe trains on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

__all__ = ["ImageTable"]

#: Per-image list columns (``None`` when the dataset does not have them).
_LIST_COLUMNS = ("path", "patient", "eye", "boxes", "masks", "caption", "split")


@dataclass
class ImageTable:
    """Images resized to one side and kept in memory as uint8, with one row of labels per image.

    Columns a dataset does not have are ``None``; :meth:`subset` keeps every column aligned.

    Attributes:
        images: ``(N, C, S, S)`` uint8.
        label: ``(N,)`` class ids of the recipe's task (DR grade, diagnosis, chest finding); 0 is
            "healthy" where the task has such a class.
        quality: ``(N,)`` quality index, best first (0 = best), naming ``quality_names``.
        quality_names: Name of each quality index, e.g. ``("Good", "Usable", "Reject")``.
        label_names: Name of each class id (may be empty).
        modality: ``"fundus"``, ``"cxr"``, ``"octa"``, ``"ct"`` (normalisation, degradations).
        path: Source file of each image.
        patient: Patient id of each image (patient-level splits).
        eye: ``"left"`` / ``"right"`` (or ``""``) of each fundus image.
        boxes: ``(K, 4)`` lesion boxes ``(x1, y1, x2, y2)`` in table pixels, per image.
        masks: ``{name: path}`` of each image's segmentation masks.
        caption: A text per image (image–text recipes).
        split: ``"train"`` / ``"val"`` / ``"test"`` per image, when the table holds several.
        fov: ``(N, S, S)`` bool field of view (the non-black fundus disc, the central thorax).
        codes: Further ``(N,)`` integer columns a recipe needs, by name (e.g. MKCNet's own quality
            coding ``"mkcnet_quality"``).
        scheme: Name of the dataset's quality scheme (:func:`qualcl.data.readers.quality_scheme`).

    Examples:
        >>> import torch
        >>> table = ImageTable(
        ...     torch.zeros(3, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]),
        ...     quality_names=("HQ", "LQ"), patient=["a", "a", "b"],
        ... )
        >>> sub = table.subset([2, 0])
        >>> len(sub), sub.label.tolist(), sub.patient, sub.low_quality.tolist()
        (2, [2, 0], ['b', 'a'], [True, False])
    """

    images: Tensor
    label: Tensor
    quality: Tensor
    quality_names: tuple[str, ...]
    label_names: tuple[str, ...] = ()
    modality: str = "fundus"
    path: list[str] | None = None
    patient: list[str] | None = None
    eye: list[str] | None = None
    boxes: list[Tensor] | None = None
    masks: list[dict[str, str]] | None = None
    caption: list[str] | None = None
    split: list[str] | None = None
    fov: Tensor | None = None
    codes: dict[str, Tensor] = field(default_factory=dict)
    scheme: str | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be (N, C, S, S) uint8, got {self.images.dtype} {tuple(self.images.shape)}")
        n = self.images.shape[0]
        for name in ("label", "quality"):
            value: Tensor = getattr(self, name)
            if value.shape != (n,) or value.is_floating_point():
                raise ValueError(f"{name} must be ({n},) integers, got {value.dtype} {tuple(value.shape)}")
        if n and (int(self.quality.min()) < 0 or int(self.quality.max()) >= len(self.quality_names)):
            raise ValueError(f"quality must index quality_names {self.quality_names}")
        for name in _LIST_COLUMNS:
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"column {name} has {len(value)} entries for {n} images")
        if self.fov is not None and self.fov.shape != (n, *self.images.shape[2:]):
            raise ValueError(f"fov must be ({n}, {self.images.shape[2]}, {self.images.shape[3]})")
        for name, value in self.codes.items():
            if value.shape != (n,):
                raise ValueError(f"code column {name!r} must be ({n},), got {tuple(value.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def low_quality(self) -> Tensor:
        """``(N,)`` bool: any quality below the best."""
        return self.quality > 0

    @property
    def lq_ratio(self) -> float:
        """Share of low-quality images."""
        return int(self.low_quality.sum()) / len(self) if len(self) else 0.0

    def subset(self, index: Sequence[int] | Tensor) -> ImageTable:
        """The rows at ``index`` (in that order), every column kept."""
        idx = torch.as_tensor(index, dtype=torch.long).flatten()
        rows = idx.tolist()
        values: dict[str, Any] = {}
        for column in fields(self):
            value = getattr(self, column.name)
            if column.name in _LIST_COLUMNS:
                values[column.name] = None if value is None else [value[i] for i in rows]
            elif column.name == "codes":
                values[column.name] = {k: v[idx] for k, v in value.items()}
            elif isinstance(value, Tensor):
                values[column.name] = value[idx]
            else:
                values[column.name] = value
        return ImageTable(**values)

    @classmethod
    def concat(cls, tables: Sequence[ImageTable]) -> ImageTable:
        """The rows of ``tables`` one after the other (same quality and label names, same image size).

        A list column is kept only when every table has it; ``codes`` only those all tables share.

        Examples:
            >>> import torch
            >>> images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
            >>> a = ImageTable(images, torch.tensor([0, 1]), torch.tensor([0, 0]), ("HQ",))
            >>> len(ImageTable.concat([a, a.subset([1])])), ImageTable.concat([a, a]).label.tolist()
            (3, [0, 1, 0, 1])
        """
        if not tables:
            raise ValueError("concat needs at least one table")
        first = tables[0]
        for other in tables[1:]:
            if other.quality_names != first.quality_names or other.label_names != first.label_names:
                raise ValueError("tables to concatenate must share quality_names and label_names")
            if other.images.shape[1:] != first.images.shape[1:]:
                raise ValueError(
                    f"tables to concatenate must share the image shape, got {tuple(first.images.shape[1:])} "
                    f"and {tuple(other.images.shape[1:])}"
                )
        values: dict[str, Any] = {}
        for column in fields(first):
            parts = [getattr(t, column.name) for t in tables]
            if column.name in _LIST_COLUMNS:
                values[column.name] = None if any(p is None for p in parts) else [v for p in parts for v in p]
            elif column.name == "codes":
                shared = set.intersection(*(set(p) for p in parts))
                values[column.name] = {k: torch.cat([p[k] for p in parts]) for k in sorted(shared)}
            elif column.name == "fov":
                values[column.name] = None if any(p is None for p in parts) else torch.cat(parts)
            elif isinstance(parts[0], Tensor):
                values[column.name] = torch.cat(parts)
            else:
                values[column.name] = parts[0]
        return cls(**values)

    def replace_images(self, images: Tensor, quality: Tensor | None = None) -> ImageTable:
        """The same rows with new ``images`` (e.g. degraded copies) and, optionally, new quality."""
        values = {column.name: getattr(self, column.name) for column in fields(self)}
        values["images"] = images
        if quality is not None:
            values["quality"] = quality
        return ImageTable(**values)
