"""MKCNet data: quality-labelled records of each dataset, their splits, in-memory images and the two-pass loader."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from qualcl.data import readers
from qualcl.data.loading import ImageProgress
from qualcl.data.readers import QualityLabelledRecord, load_quality_image, mkcnet_labels, quality_scheme
from qualcl.data.table import ImageTable
from qualcl.recipes.mkcnet.config import DATASETS, DataConfig
from qualcl.samplers._ranks import RankAware

__all__ = [
    "MKCNET_QUALITY",
    "MkcnetData",
    "MkcnetDataset",
    "TwoPassBatchSampler",
    "keep_lq_fraction",
    "load_quality_table",
    "load_splits",
    "mkcnet_sizes",
    "normalisation",
    "random_split",
]

Records = list[QualityLabelledRecord]
#: Imaging modality of each quality scheme.
MODALITIES = {"eyeq": "fundus", "deepdrid": "fundus", "drac": "octa", "cxr_iqad": "cxr", "ct_iqad": "ct"}
#: The name of MKCNet's own quality coding (its split files' ``IQ_label``) among an ImageTable's codes.
MKCNET_QUALITY = "mkcnet_quality"
#: The builders of the sets assembled from two sources, and the sources' folders in ``--data``.
_SOURCES: dict[str, tuple[Callable[..., Records], str, str]] = {
    "cxr-iqad": (readers.build_cxr_iqad, "kermany", "nih"),
    "ct-iqad": (readers.build_ct_iqad, "hq", "lq"),
}


def load_quality_table(
    records: Sequence[QualityLabelledRecord], size: int, channels: int, *, progress: ImageProgress = None
) -> ImageTable:
    """Read, resize (bicubic) and, where a record says so, degrade the images of ``records``.

    ``label`` is MKCNet's diagnosis (``DR_label``; EyeQ/DeepDRiD grades 5 → 3), ``quality`` the canonical
    best-first level and ``codes["mkcnet_quality"]`` MKCNet's ``IQ_label`` (what the joint encoding uses).
    """
    if not records:
        raise ValueError("no images to load: the split is empty")
    mode, paths = "RGB" if channels == 3 else "L", [record.image for record in records]
    arrays = []
    for index, _ in enumerate(paths if progress is None else progress(paths)):
        array = np.asarray(load_quality_image(records[index], mode=mode, size=(size, size)))
        arrays.append(torch.from_numpy(array.copy()).view(size, size, channels).permute(2, 0, 1))
    labels = [mkcnet_labels(r) for r in records]
    scheme = quality_scheme(records[0].dataset)
    return ImageTable(
        images=torch.stack(arrays),
        label=torch.tensor([d for d, _ in labels], dtype=torch.long),
        quality=torch.tensor([r.quality for r in records], dtype=torch.long),
        quality_names=scheme.quality_names,
        modality=MODALITIES.get(scheme.name, "fundus"),
        path=[str(r.image) for r in records],
        patient=[r.patient_id or "" for r in records],
        codes={MKCNET_QUALITY: torch.tensor([q for _, q in labels], dtype=torch.long)},
        scheme=scheme.name,
    )


def mkcnet_sizes(table: ImageTable) -> tuple[int, int]:
    """``(N_d, N_q)``: the numbers of diagnosis and quality classes of MKCNet's coding of ``table``."""
    scheme = quality_scheme(str(table.scheme))
    return scheme.num_mkcnet_diagnosis, scheme.num_mkcnet_quality


def random_split(records: Sequence[QualityLabelledRecord], fraction: float, seed: int) -> tuple[Records, Records]:
    """Split ``records`` into ``(kept, held_out)`` with ``fraction`` of the patients held out.

    Records without a patient id are their own group; the held-out groups are the first of a seeded
    permutation (at least one, and one kept, for a nonzero ``fraction`` of two or more groups).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must lie in [0, 1), got {fraction}")
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(record.patient_id if record.patient_id is not None else f"#{index}", []).append(index)
    names = sorted(groups)
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    count = round(fraction * len(names))
    if fraction > 0 and len(names) >= 2:
        count = min(max(count, 1), len(names) - 1)
    held = {i for position in order[:count] for i in groups[names[position]]}
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def keep_lq_fraction(records: Sequence[QualityLabelledRecord], fraction: float, seed: int) -> Records:
    """All HQ records and a seeded ``fraction`` of the LQ ones (MKCNet Fig. 5), in the original order."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.train_lq_fraction must lie in [0, 1], got {fraction}")
    low = [i for i, r in enumerate(records) if r.quality > 0]
    order = torch.randperm(len(low), generator=torch.Generator().manual_seed(seed)).tolist()
    drop = {low[i] for i in order[round(fraction * len(low)) :]}
    return [r for i, r in enumerate(records) if i not in drop]


def _records(config: DataConfig, root: Path) -> list[Records]:
    """The dataset's ``[train, val, test]`` records (official splits where the dataset has them)."""
    if config.dataset == "deepdrid":
        return [readers.read_deepdrid(root, split) for split in ("train", "val", "test")]
    if config.dataset in ("synthetic", "eyeq"):
        train = readers.read_eyeq_quality(root, "train")
        return [*random_split(train, config.val_fraction, config.seed), readers.read_eyeq_quality(root, "test")]
    if config.dataset == "drac":
        records = readers.read_drac(root)
    elif config.dataset in _SOURCES:  # the --data folder holds the set's two sources
        build, *names = _SOURCES[config.dataset]
        folders, what = [root / name for name in names], config.dataset.upper()
        if missing := [folder for folder in folders if not folder.is_dir()]:
            raise FileNotFoundError(f"{what}: expected the folder {missing[0]} (--data holds the set's sources)")
        records = build(*folders, seed=43)
    else:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {sorted(DATASETS)}")
    rest, test = random_split(records, config.test_fraction, config.seed)
    return [*random_split(rest, config.val_fraction / max(1e-9, 1 - config.test_fraction), config.seed + 1), test]


def load_splits(config: DataConfig, root: Path, *, progress: ImageProgress = None) -> MkcnetData:
    """The ``train``, ``val`` and ``test`` images of ``config.dataset`` in ``root`` and their normalisation.

    ``config.train_lq_fraction`` thins the training split; ``progress`` wraps the reading of each split's files.
    """
    train, val, test = _records(config, root)
    for name, split in zip(("train", "val", "test"), (train, val, test), strict=True):
        if not split:
            raise ValueError(f"{config.dataset}: the {name} split is empty; use more images or other fractions")
    train = keep_lq_fraction(train, config.train_lq_fraction, config.seed)
    load = functools.partial(load_quality_table, size=config.image_size, channels=config.channels, progress=progress)
    tables = load(train), load(val), load(test)
    return MkcnetData(*tables, *normalisation(config, tables[0]))


def normalisation(config: DataConfig, train: ImageTable) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The dataset's fixed ``(mean, std)``, or the per-channel statistics of the training images."""
    if config.mean:  # DataConfig checked one value per channel
        return tuple(config.mean), tuple(config.std)
    pixels = train.images.to(torch.float64).div(255).transpose(0, 1).reshape(config.channels, -1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).clamp_min(1e-6).tolist())


class MkcnetDataset(Dataset[tuple[Tensor, int, int, int, int]]):
    """Item ``k``: image ``k mod N`` normalised, its diagnosis, MKCNet quality code, canonical quality, pass ``k // N``.

    Indices past ``N`` come from :class:`TwoPassBatchSampler`'s second pass: the pass id tells the
    training step which stage the batch belongs to. No augmentation, as the official code.
    """

    def __init__(self, data: ImageTable, mean: Sequence[float], std: Sequence[float]) -> None:
        self.data = data
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, int, int]:
        d, (p, i) = self.data, divmod(index, len(self.data))
        image = (d.images[i].to(torch.float32) / 255 - self.mean) / self.std
        return image, int(d.label[i]), int(d.codes[MKCNET_QUALITY][i]), int(d.quality[i]), p


class MkcnetData(NamedTuple):
    """A run's splits and the normalisation of their images."""

    train: ImageTable
    val: ImageTable
    test: ImageTable
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def dataset(self, split: str) -> MkcnetDataset:
        """The normalised dataset of ``split``."""
        return MkcnetDataset(getattr(self, split), self.mean, self.std)


class TwoPassBatchSampler(RankAware, Sampler[list[int]]):
    """Batches of ``passes`` shuffled passes over ``n`` items per epoch; pass ``p`` yields indices ``p·n + i``.

    MKCNet's epoch is two full passes over the training set, the first updating the Task Net and
    the second the Meta Learner, each with its own shuffle. A last batch of a single item is
    dropped (BatchNorm in training mode needs two). Seeded by ``(seed, epoch)``; call
    :meth:`set_epoch` at each epoch start (the driver's :class:`~qualcl.recipes.resume.ResumableLoader`
    does, and leaves out the done batches of a resumed epoch).

    Under DDP, batch ``b`` of each pass goes to rank ``b mod W`` and every pass is cut to the same
    number of batches per rank, so all ranks are in the same pass at every step (the Meta Learner's
    step all-reduces its gradient).

    Args:
        n: Number of items.
        batch_size: Items per batch (per process).
        passes: Passes per epoch (1 for the variants without a Meta Learner).
        seed: Seed of the shuffles.
        num_replicas: World size (default: ``torch.distributed``'s when iterated, else 1).
        rank: This process's rank (default: likewise, else 0).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        passes: int,
        seed: int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if n < 2 or batch_size < 2:
            raise ValueError(f"need n >= 2 items and batch_size >= 2, got n={n}, batch_size={batch_size}")
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        self.n, self.batch_size, self.passes, self.seed, self.epoch = n, batch_size, passes, seed, 0
        self._set_world(num_replicas, rank)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch``."""
        self.epoch = epoch

    @property
    def batches_per_pass(self) -> int:
        """Batches in one pass over all ranks."""
        return self.n // self.batch_size + (self.n % self.batch_size >= 2)  # a last batch of one is dropped

    def _local_per_pass(self) -> int:
        batches, world = self.batches_per_pass, self.num_replicas
        if batches < world:
            raise ValueError(f"{batches} batches per pass cannot be shared by {world} processes")
        return batches // world

    def __len__(self) -> int:
        return self.passes * self._local_per_pass()

    def __iter__(self) -> Iterator[list[int]]:
        world, local = self.num_replicas, self._local_per_pass()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        for p in range(self.passes):
            order = torch.randperm(self.n, generator=generator).tolist()
            for b in range(self.rank, local * world, world):
                yield [p * self.n + i for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
