"""Mirror-retrieval data: database / validation / query tables and the training dataset with its mirror flags."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from qualcl.data.loading import UNRATED, ImageProgress, load_fundus_table, patient_split
from qualcl.data.readers import read_eyeq
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


def _eyeq_layout(config: DataConfig, root: Path, progress: ImageProgress) -> RetrievalData:
    """EyeQ-format label files (real EyeQ, or the synthetic set, which writes the same files)."""
    train = load_fundus_table(read_eyeq(root, "train"), config.image_size, progress=progress)
    test = load_fundus_table(read_eyeq(root, "test"), config.image_size, progress=progress)
    assert train.patient is not None
    keep, held = patient_split(train.patient, config.val_fraction, config.seed)
    return RetrievalData(train.subset(keep), train.subset(held), test)


def _eyepacs(config: DataConfig, root: Path, progress: ImageProgress) -> RetrievalData:
    """Kaggle EyePACS ``trainLabels.csv``, split as the public FundusDR code does (or by patient)."""
    from qualcl.data.readers import fundusdr_split, read_eyepacs

    records = read_eyepacs(root)
    train, val, test = fundusdr_split(records, by_patient=config.split == "patient")

    def table(part: Sequence[Any]) -> ImageTable:
        return load_fundus_table(
            part, config.image_size, progress=progress, quality=[0] * len(part), quality_names=UNRATED
        )

    return RetrievalData(table(train), table(val), table(test))


def load_retrieval_data(config: DataConfig, root: Path, *, progress: ImageProgress = None) -> RetrievalData:
    """Read the dataset at ``root`` into database (train + val) and query (test) tables.

    Args:
        config: The data section of the config.
        root: Dataset folder (the synthetic set's folder for ``"synthetic"``).
        progress: Optional wrapper around the iteration over image files.

    Raises:
        ValueError: A split is empty (too few images for the validation fraction).
    """
    loader = _eyepacs if config.dataset == "eyepacs" else _eyeq_layout
    data = loader(config, root, progress)
    for name, part in zip(RetrievalData._fields, data, strict=True):
        if len(part) < 2:
            raise ValueError(f"the {name} split of {root} has {len(part)} image(s); retrieval needs at least 2")
    return data


class RetrievalDataset(Dataset[tuple[Tensor, Tensor, Tensor, int, int]]):
    """Images in ``[0, 1]`` with the flags of the mirrors the model will see.

    Each item is ``(image (C, S, S) float, flip_h, flip_v, grade, quality)``. ``flip_h`` / ``flip_v``
    are bool scalars: whether the horizontal / vertical mirror is the flipped image (``"encode"``
    mirrors: always; the public code's ``"random"`` mirrors during training: each with probability
    0.5, drawn from ``(seed, epoch, index)`` so that a resumed epoch sees the same flips).

    Args:
        table: The images.
        random_mirrors: Draw the flips (training with ``model.mirrors="random"``).
        seed: Seed of the draws.
    """

    def __init__(self, table: ImageTable, *, random_mirrors: bool = False, seed: int = 0) -> None:
        self.table = table
        self.random_mirrors = random_mirrors
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the flips of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor, int, int]:
        image = self.table.images[index].float() / 255.0
        if self.random_mirrors:
            key = zlib.crc32(f"{self.seed}/{self.epoch}/{index}".encode())
            flips = torch.rand(2, generator=torch.Generator().manual_seed(key)) < 0.5
        else:
            flips = torch.ones(2, dtype=torch.bool)
        return image, flips[0], flips[1], int(self.table.label[index]), int(self.table.quality[index])
