"""MKCNet data: quality-labelled records of each dataset, their splits, in-memory images and the two-pass loader."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from qualcl.data.loading import ImageProgress
from qualcl.data.readers import (
    QualityLabelledRecord,
    build_ct_iqad,
    build_cxr_iqad,
    load_quality_image,
    mkcnet_labels,
    quality_scheme,
    read_deepdrid,
    read_drac,
    read_eyeq_quality,
)
from qualcl.data.table import ImageTable
from qualcl.recipes.mkcnet.config import DATASETS, DataConfig
from qualcl.samplers._ranks import RankAware

__all__ = [
    "MKCNET_QUALITY",
    "MkcnetDataset",
    "Splits",
    "TwoPassBatchSampler",
    "keep_lq_fraction",
    "load_quality_table",
    "load_splits",
    "mkcnet_sizes",
    "random_split",
]


#: Imaging modality of each quality scheme.
MODALITIES = {"eyeq": "fundus", "deepdrid": "fundus", "drac": "octa", "cxr_iqad": "cxr", "ct_iqad": "ct"}
#: The name of MKCNet's own quality coding (its split files' ``IQ_label``) among an ImageTable's codes.
MKCNET_QUALITY = "mkcnet_quality"


def load_quality_table(
    records: Sequence[QualityLabelledRecord], size: int, channels: int, *, progress: ImageProgress = None
) -> ImageTable:
    """Read, resize (bicubic) and, where a record says so, degrade the images of ``records``.

    The table's ``label`` is the diagnosis in MKCNet's coding (``DR_label``; EyeQ/DeepDRiD grades
    mapped 5 → 3), ``quality`` the canonical best-first index (per-level metrics) and
    ``codes["mkcnet_quality"]`` MKCNet's ``IQ_label`` (what the joint encoding uses). ``progress``
    wraps the iteration over the image files (a progress bar, ``ctx.image_progress``).
    """
    if not records:
        raise ValueError("no images to load: the split is empty")
    mode = "RGB" if channels == 3 else "L"
    arrays = []
    paths = [record.image for record in records]
    for index, _ in enumerate(paths if progress is None else progress(paths)):
        record = records[index]
        array = np.asarray(load_quality_image(record, mode=mode, size=(size, size)))
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


@dataclass
class Splits:
    """Train / validation / test records of one dataset."""

    train: list[QualityLabelledRecord]
    val: list[QualityLabelledRecord]
    test: list[QualityLabelledRecord]


def random_split(
    records: Sequence[QualityLabelledRecord], fraction: float, seed: int
) -> tuple[list[QualityLabelledRecord], list[QualityLabelledRecord]]:
    """Split ``records`` into ``(kept, held_out)`` with ``fraction`` of the patients held out.

    Records without a patient id are their own group. The choice is a seeded permutation of the
    groups, so that the same seed always gives the same split.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must lie in [0, 1), got {fraction}")
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        key = record.patient_id if record.patient_id is not None else f"#{index}"
        groups.setdefault(key, []).append(index)
    names = sorted(groups)
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    count = round(fraction * len(names))
    if fraction > 0 and len(names) >= 2:
        count = min(max(count, 1), len(names) - 1)
    held = {i for position in order[:count] for i in groups[names[position]]}
    kept = [r for i, r in enumerate(records) if i not in held]
    return kept, [r for i, r in enumerate(records) if i in held]


def _subfolder(root: Path, name: str, what: str) -> Path:
    path = root / name
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected the folder {path} (the --data folder holds {what}'s sources)")
    return path


def _records(config: DataConfig, root: Path) -> Splits:
    """Read the dataset's records and split them (official splits where the dataset has them)."""
    seed = config.seed
    if config.dataset in ("synthetic", "eyeq"):
        train, val = random_split(read_eyeq_quality(root, "train"), config.val_fraction, seed)
        return Splits(train, val, read_eyeq_quality(root, "test"))
    if config.dataset == "deepdrid":
        return Splits(read_deepdrid(root, "train"), read_deepdrid(root, "val"), read_deepdrid(root, "test"))
    if config.dataset == "drac":
        records = read_drac(root)
    elif config.dataset == "cxr-iqad":
        kermany, nih = _subfolder(root, "kermany", "CXR-IQAD"), _subfolder(root, "nih", "CXR-IQAD")
        records = build_cxr_iqad(kermany, nih, seed=43)
    elif config.dataset == "ct-iqad":
        records = build_ct_iqad(_subfolder(root, "hq", "CT-IQAD"), _subfolder(root, "lq", "CT-IQAD"), seed=43)
    else:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {sorted(DATASETS)}")
    rest, test = random_split(records, config.test_fraction, seed)
    train, val = random_split(rest, config.val_fraction / max(1e-9, 1 - config.test_fraction), seed + 1)
    return Splits(train, val, test)


def keep_lq_fraction(
    records: Sequence[QualityLabelledRecord], fraction: float, seed: int
) -> list[QualityLabelledRecord]:
    """All HQ records and a seeded ``fraction`` of the LQ ones (MKCNet Fig. 5), in the original order."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.train_lq_fraction must lie in [0, 1], got {fraction}")
    low = [i for i, r in enumerate(records) if r.quality > 0]
    order = torch.randperm(len(low), generator=torch.Generator().manual_seed(seed)).tolist()
    drop = {low[i] for i in order[round(fraction * len(low)) :]}
    return [r for i, r in enumerate(records) if i not in drop]


def load_splits(
    config: DataConfig, root: Path, *, progress: ImageProgress = None
) -> tuple[ImageTable, ImageTable, ImageTable]:
    """``(train, val, test)`` images of ``config.dataset`` in ``root``; ``train_lq_fraction`` thins train."""
    splits = _records(config, root)
    for name in ("train", "val", "test"):
        if not getattr(splits, name):
            raise ValueError(f"{config.dataset}: the {name} split is empty; use more images or other fractions")
    train = keep_lq_fraction(splits.train, config.train_lq_fraction, config.seed)
    size, channels = config.image_size, config.channels
    return (
        load_quality_table(train, size, channels, progress=progress),
        load_quality_table(splits.val, size, channels, progress=progress),
        load_quality_table(splits.test, size, channels, progress=progress),
    )


def normalisation(config: DataConfig, train: ImageTable) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The dataset's fixed ``(mean, std)``, or the per-channel statistics of the training images."""
    if config.mean:  # DataConfig checked one value per channel
        return tuple(config.mean), tuple(config.std)
    pixels = train.images.to(torch.float64).div(255).transpose(0, 1).reshape(config.channels, -1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).clamp_min(1e-6).tolist())


class MkcnetDataset(Dataset[tuple[Tensor, int, int, int, int]]):
    """Item ``k``: image ``k mod N`` normalised, its diagnosis, MKCNet quality code, canonical quality, pass ``k // N``.

    Indices past ``N`` come from :class:`TwoPassBatchSampler`'s second pass; the pass id tells the
    training step which stage the batch belongs to, whatever the batch's position in the epoch.
    No augmentation, as the official code.
    """

    def __init__(self, data: ImageTable, mean: Sequence[float], std: Sequence[float]) -> None:
        self.data = data
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, int, int]:
        n = len(self.data)
        i = index % n
        image = (self.data.images[i].to(torch.float32) / 255 - self.mean) / self.std
        return (
            image,
            int(self.data.label[i]),
            int(self.data.codes[MKCNET_QUALITY][i]),
            int(self.data.quality[i]),
            index // n,
        )


class TwoPassBatchSampler(RankAware, Sampler[list[int]]):
    """Batches of ``passes`` shuffled passes over ``n`` items per epoch; pass ``p`` yields indices ``p·n + i``.

    MKCNet's epoch is two full passes over the training set, the first updating the Task Net and
    the second the Meta Learner, each with its own shuffle. A last batch of a single item is
    dropped (BatchNorm in training mode needs two). Seeded by ``(seed, epoch)``; call
    :meth:`set_epoch` at each epoch start. (A resumed epoch leaves out its done batches through the
    driver's :class:`~qualcl.recipes.resume.ResumableLoader`.)

    Under DDP, batch ``b`` of each pass goes to rank ``b mod W`` and every pass is cut to the same
    number of batches per rank, so all ranks are in the same pass at every step (the Meta Learner's
    step all-reduces its gradient). The world size and rank are read when iterated unless given.

    Args:
        n: Number of items.
        batch_size: Items per batch (per process).
        passes: Passes per epoch (1 for the variants without a Meta Learner).
        seed: Seed of the shuffles.
        num_replicas: World size (default: from ``torch.distributed``, else 1).
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
        self.n = n
        self.batch_size = batch_size
        self.passes = passes
        self.seed = seed
        self.epoch = 0
        self._set_world(num_replicas, rank)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch``."""
        self.epoch = epoch

    @property
    def batches_per_pass(self) -> int:
        """Batches in one pass over all ranks."""
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest >= 2 else 0)

    def _local_per_pass(self) -> int:
        world = self.num_replicas
        per = self.batches_per_pass // world
        if per < 1:
            raise ValueError(f"{self.batches_per_pass} batches per pass cannot be shared by {world} processes")
        return per

    def __len__(self) -> int:
        return self.passes * self._local_per_pass()

    def __iter__(self) -> Iterator[list[int]]:
        world, me = self.num_replicas, self.rank
        local = self._local_per_pass()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        for p in range(self.passes):
            order = torch.randperm(self.n, generator=generator).tolist()
            for b in range(me, local * world, world):
                yield [p * self.n + i for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
