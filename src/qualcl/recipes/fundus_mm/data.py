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
    paths: Sequence[Path],
    labels: Sequence[int],
    quality: Sequence[int],
    quality_names: tuple[str, ...],
    class_names: Sequence[str],
    captions: Sequence[str],
    patients: Sequence[str],
    size: int,
    progress: ImageProgress,
) -> ImageTable:
    images, _ = read_resized(list(paths), size, progress=progress)
    return ImageTable(
        images=images,
        label=torch.tensor(list(labels), dtype=torch.long),
        quality=torch.tensor(list(quality), dtype=torch.long),
        quality_names=quality_names,
        label_names=tuple(class_names),
        path=[str(p) for p in paths],
        patient=list(patients),
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
        return _table(
            [r.image for r in records],
            [r.dr_grade for r in records],
            [r.quality for r in records],
            FUNDUS_QUALITY,
            names,
            [captions[r.image.name] for r in records],
            [r.patient_id for r in records],
            config.image_size,
            progress,
        )

    train, val = _split(table("train"), config.val_fraction, config.seed)
    return FundusMMData(train, val, table("test"), class_prompts("dr"), names, class_level=False)


def _class_level(
    config: DataConfig, records: Sequence[Any], labels: Sequence[int], quality: Sequence[int],
    quality_names: tuple[str, ...], key: str, progress: ImageProgress, test: Sequence[Any] | None = None,
    test_labels: Sequence[int] = (), test_quality: Sequence[int] = (),
) -> FundusMMData:  # fmt: skip
    prompts = class_prompts(key)
    names = [n for n, _ in CLASS_DEFINITIONS[key]]

    def table(part: Sequence[Any], y: Sequence[int], q: Sequence[int]) -> ImageTable:
        return _table(
            [r.image for r in part], y, q, quality_names, names, [prompts[c][-1] for c in y],
            [r.patient_id for r in part], config.image_size, progress,
        )  # fmt: skip

    everything = table(records, labels, quality)
    if test is None:
        rest, held_out = _split(everything, config.test_fraction, config.seed)
    else:
        rest, held_out = everything, table(test, test_labels, test_quality)
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
        data = _class_level(config, records, [r.dr_grade for r in records], [0] * len(records), UNRATED, "dr", progress)
    elif config.dataset == "odir":
        from qualcl.data.readers import ODIR_QUALITY, read_odir

        eyes = read_odir(root)
        data = _class_level(
            config, eyes, [e.label for e in eyes], [e.quality for e in eyes], ODIR_QUALITY, "odir", progress
        )
    else:
        from qualcl.data.readers import read_fives

        train, test = read_fives(root, "train"), read_fives(root, "test")
        rated = all(r.quality is not None for r in train + test)
        names = ("Good", "Low") if rated else UNRATED

        def quality(part: Sequence[Any]) -> list[int]:
            return [0 if not rated or r.good_quality else 1 for r in part]

        data = _class_level(
            config, train, [r.label for r in train], quality(train), names, "fives", progress,
            test=test, test_labels=[r.label for r in test], test_quality=quality(test),
        )  # fmt: skip
    for name in ("train", "val", "test"):
        if len(getattr(data, name)) < 2:
            raise ValueError(
                f"the {name} split of {root} has {len(getattr(data, name))} image(s); at least 2 are needed"
            )
    return data


class PairDataset(Dataset[tuple[Tensor, Tensor, int, int]]):
    """Image–caption pairs: ``(image (3, S, S) float in [0, 1], ids (T,), label, quality)``.

    No flip augmentation: a caption names the eye, and a flipped left eye looks like a right
    one. The random patch masking is the pre-training's augmentation.

    Args:
        table: Images with captions.
        ids: ``(N, T)`` caption ids (the tokenizer's encoding of ``table.caption``).
    """

    def __init__(self, table: ImageTable, ids: Tensor) -> None:
        if ids.shape[0] != len(table):
            raise ValueError(f"ids has {ids.shape[0]} rows for {len(table)} images")
        self.table, self.ids = table, ids

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int, int]:
        image = self.table.images[index].float() / 255.0
        return image, self.ids[index], int(self.table.label[index]), int(self.table.quality[index])
