"""Mirror-retrieval data: database / validation / query tables and the training dataset with its mirror flags."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from qualcl.data.loading import UNRATED, ImageProgress, load_fundus_table, patient_split
from qualcl.data.readers import fundusdr_split, read_eyepacs, read_eyeq
from qualcl.data.table import ImageTable
from qualcl.recipes.mirror_retrieval.config import DataConfig

__all__ = ["RetrievalData", "RetrievalDataset", "load_retrieval_data"]


class RetrievalData(NamedTuple):
    """The run's tables: the database is ``train`` + ``val``, the queries are ``test``."""

    train: ImageTable
    val: ImageTable
    test: ImageTable

    @property
    def database(self) -> ImageTable:
        """Training then validation images (the searched set)."""
        return ImageTable.concat([self.train, self.val])


def load_retrieval_data(config: DataConfig, root: Path, *, progress: ImageProgress = None) -> RetrievalData:
    """Read the dataset at ``root`` into database (train + val) and query (test) tables.

    EyePACS (Kaggle ``trainLabels.csv``) is split as the public FundusDR code does (or by patient),
    every image in one quality stratum ``"unrated"``; EyeQ-format label files (real EyeQ, or the
    synthetic set, which writes the same files) hold out ``config.val_fraction`` of the training patients.

    Args:
        config: The data section of the config.
        root: Dataset folder (the synthetic set's folder for ``"synthetic"``).
        progress: Optional wrapper around the iteration over image files.

    Raises:
        ValueError: A split is empty (too few images for the validation fraction).
    """

    def table(records: Any, **quality: Any) -> ImageTable:
        return load_fundus_table(records, config.image_size, progress=progress, **quality)

    if config.dataset == "eyepacs":
        parts = fundusdr_split(read_eyepacs(root), by_patient=config.split == "patient")
        data = RetrievalData(*(table(part, quality=[0] * len(part), quality_names=UNRATED) for part in parts))
    else:
        train = table(read_eyeq(root, "train"))
        assert train.patient is not None
        keep, held = patient_split(train.patient, config.val_fraction, config.seed)
        data = RetrievalData(train.subset(keep), train.subset(held), table(read_eyeq(root, "test")))
    for name, part in zip(RetrievalData._fields, data, strict=True):
        if len(part) < 2:
            raise ValueError(f"the {name} split of {root} has {len(part)} image(s); retrieval needs at least 2")
    return data


class RetrievalDataset(Dataset[tuple[Tensor, Tensor, Tensor, int, int]]):
    """``(image (C, S, S) in [0, 1], flip_h, flip_v, grade, quality)`` items of ``table``.

    ``flip_h`` / ``flip_v`` are bool scalars: whether the horizontal / vertical mirror the model sees
    is the flipped image (always, unless ``random_mirrors``: the public code's training flips, each
    with probability 0.5, drawn from ``(seed, epoch, index)`` so that a resumed epoch sees the same).
    """

    def __init__(self, table: ImageTable, *, random_mirrors: bool = False, seed: int = 0) -> None:
        self.table, self.random_mirrors, self.seed, self.epoch = table, random_mirrors, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the flips of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor, int, int]:
        flips = torch.ones(2, dtype=torch.bool)
        if self.random_mirrors:
            key = zlib.crc32(f"{self.seed}/{self.epoch}/{index}".encode())
            flips = torch.rand(2, generator=torch.Generator().manual_seed(key)) < 0.5
        image = self.table.images[index].float() / 255.0
        return image, flips[0], flips[1], int(self.table.label[index]), int(self.table.quality[index])
