"""Image–text data: train / validation / test tables with captions, the class prompts and the dataset of pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from qualcl.data.loading import FUNDUS_QUALITY, UNRATED, ImageProgress, patient_split, read_resized
from qualcl.data.table import ImageTable
from qualcl.recipes.fundus_mm.config import DataConfig
from qualcl.recipes.fundus_mm.prompts import CLASS_DEFINITIONS, class_prompts

__all__ = ["FundusMMData", "PairDataset", "load_fundus_mm_data"]

_Part = tuple[Sequence[Any], Sequence[int], Sequence[int]]  # records, their labels, their quality ids


class FundusMMData(NamedTuple):
    """The run's tables (each with a caption per image) and the zero-shot class prompts.

    Attributes:
        train: Pre-training (and few-shot, fine-tuning) images.
        val: Validation images (best epoch).
        test: Test images.
        prompts: The prompts of each class, in class-id order.
        class_names: Short class names.
        class_level: Whether the captions are class-level (the class's definition prompt) rather
            than written per image.
    """

    train: ImageTable
    val: ImageTable
    test: ImageTable
    prompts: list[list[str]]
    class_names: list[str]
    class_level: bool


def _table(
    records: Sequence[Any], labels: Sequence[int], quality: Sequence[int], quality_names: tuple[str, ...],
    class_names: Sequence[str], captions: Sequence[str], size: int, progress: ImageProgress,
) -> ImageTable:  # fmt: skip
    paths = [r.image for r in records]
    images, _ = read_resized(paths, size, progress=progress)
    return ImageTable(
        images=images,
        label=torch.tensor(list(labels), dtype=torch.long),
        quality=torch.tensor(list(quality), dtype=torch.long),
        quality_names=quality_names,
        label_names=tuple(class_names),
        path=[str(p) for p in paths],
        patient=[r.patient_id for r in records],
        caption=list(captions),
        fov=images.amax(dim=1) > 12,
    )


def _split(table: ImageTable, fraction: float, seed: int) -> tuple[ImageTable, ImageTable]:
    assert table.patient is not None
    keep, held = patient_split(table.patient, fraction, seed)
    return table.subset(keep), table.subset(held)


def _synthetic(config: DataConfig, root: Path, progress: ImageProgress) -> FundusMMData:
    from qualcl.data.readers import read_eyeq
    from qualcl.data.synthetic.reader import load_fundus_dataset

    captions = {Path(r["image"]).name: str(r["caption"]) for r in load_fundus_dataset(root).records}
    names = [n for n, _ in CLASS_DEFINITIONS["dr"]]

    def table(split: str) -> ImageTable:
        records = read_eyeq(root, split)
        labels, quality = [r.dr_grade for r in records], [r.quality for r in records]
        texts = [captions[r.image.name] for r in records]
        return _table(records, labels, quality, FUNDUS_QUALITY, names, texts, config.image_size, progress)

    train, val = _split(table("train"), config.val_fraction, config.seed)
    return FundusMMData(train, val, table("test"), class_prompts("dr"), names, class_level=False)


def _class_level(
    config: DataConfig, key: str, quality_names: tuple[str, ...], progress: ImageProgress, *parts: _Part
) -> FundusMMData:
    """Tables captioned with their class's definition prompt from one part (test split off) or two (train, test)."""
    prompts, names = class_prompts(key), [n for n, _ in CLASS_DEFINITIONS[key]]
    tables = [
        _table(records, y, q, quality_names, names, [prompts[c][-1] for c in y], config.image_size, progress)
        for records, y, q in parts
    ]
    rest, held_out = tables if len(tables) == 2 else _split(tables[0], config.test_fraction, config.seed)
    train, val = _split(rest, config.val_fraction, config.seed)
    return FundusMMData(train, val, held_out, prompts, names, class_level=True)


def load_fundus_mm_data(config: DataConfig, root: Path, *, progress: ImageProgress = None) -> FundusMMData:
    """Read the dataset at ``root`` into train / validation / test tables with captions.

    * ``synthetic``: EyeQ-format splits of the generated set; each image's own caption (eye, grade,
      lesions, location, quality); the training patients split off a validation share.
    * ``aptos``: DR grades of ``train.csv``; patients split into test / validation / train;
      unrated quality.
    * ``odir``: one image per eye, the eye's primary category; quality Good / Low from the
      keywords (:func:`qualcl.data.readers.odir_keyword_labels`).
    * ``fives``: the official train / test split; quality Good / Low from the quality sheet
      (all factors good = Good), unrated without it.

    The real datasets' captions are class-level: the class's ``name: definition`` prompt (the
    paper's "disease name + definition"); the contrastive loss then treats same-class pairs as
    positives (``train.class_level_positives``).

    Raises:
        ValueError: A split is too small (fewer than two images).
    """
    if config.dataset == "synthetic":
        data = _synthetic(config, root, progress)
    elif config.dataset == "aptos":
        from qualcl.data.readers import read_aptos

        records = read_aptos(root)
        data = _class_level(
            config, "dr", UNRATED, progress, (records, [r.dr_grade for r in records], [0] * len(records))
        )
    elif config.dataset == "odir":
        from qualcl.data.readers import ODIR_QUALITY, read_odir

        eyes = read_odir(root)
        data = _class_level(
            config, "odir", ODIR_QUALITY, progress, (eyes, [e.label for e in eyes], [e.quality for e in eyes])
        )
    else:
        from qualcl.data.readers import read_fives

        train, test = read_fives(root, "train"), read_fives(root, "test")
        rated = all(r.quality is not None for r in train + test)
        parts = [(p, [r.label for r in p], [0 if not rated or r.good_quality else 1 for r in p]) for p in (train, test)]
        data = _class_level(config, "fives", ("Good", "Low") if rated else UNRATED, progress, *parts)
    for name, table in zip(("train", "val", "test"), data[:3], strict=True):
        if len(table) < 2:
            raise ValueError(f"the {name} split of {root} has {len(table)} image(s); at least 2 are needed")
    return data


class PairDataset(Dataset[tuple[Any, ...]]):
    """Image–caption pairs: ``(image (3, S, S) float in [0, 1], ids (T,), label, quality)``.

    No flip augmentation: a caption names the eye, and a flipped left eye looks like a right
    one. The random patch masking is the pre-training's augmentation.

    Args:
        table: Images with captions.
        ids: ``(N, T)`` caption ids (the tokenizer's encoding of ``table.caption``); ``None``: the
            items are ``(image, label, quality)``, as :class:`~qualcl.recipes.modules.GradingFineTuning` reads them.
    """

    def __init__(self, table: ImageTable, ids: Tensor | None = None) -> None:
        if ids is not None and ids.shape[0] != len(table):
            raise ValueError(f"ids has {ids.shape[0]} rows for {len(table)} images")
        self.table, self.ids = table, ids

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        image, text = self.table.images[index].float() / 255.0, () if self.ids is None else (self.ids[index],)
        return image, *text, int(self.table.label[index]), int(self.table.quality[index])
