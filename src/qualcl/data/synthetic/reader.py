"""Read a SynthFundus folder back: its ground truth, its splits, and a torch ``Dataset`` over it."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from qualcl.data.images import open_image
from qualcl.data.synthetic.fundus import MASK_NAMES

__all__ = ["FundusFolder", "SyntheticFundusDataset", "load_fundus_dataset"]

_CSV_COLUMNS = ("image", "quality", "DR_grade")
_RECORD_KEYS = ("image", "patient_id", "eye", "dr_grade", "quality", "boxes", "split")
_SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class FundusFolder:
    """A SynthFundus folder as read from disk.

    Attributes:
        root: The folder.
        metadata: Dataset-level metadata from ``ground_truth.json``.
        records: Per-image records, in index order.
        splits: Record positions of ``"train"`` and ``"test"`` (in CSV order).

    Examples:
        >>> folder = load_fundus_dataset("synth")  # doctest: +SKIP
        >>> folder.metadata["seed"], len(folder.splits["test"])  # doctest: +SKIP
        (0, 80)
    """

    root: Path
    metadata: dict[str, Any]
    records: list[dict[str, Any]]
    splits: dict[str, list[int]]


def _read_split(path: Path) -> list[tuple[str, int, int]]:
    if not path.is_file():
        raise FileNotFoundError(f"SynthFundus: label file {path} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise ValueError(f"{path} is empty: expected the header {','.join(('', *_CSV_COLUMNS))!r}")
    header = [name.strip() for name in rows[0]]
    missing = [name for name in _CSV_COLUMNS if name not in header]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; found columns {header}")
    at = {name: header.index(name) for name in _CSV_COLUMNS}
    out = []
    for line, row in enumerate(rows[1:], start=2):
        try:
            out.append((row[at["image"]], int(row[at["quality"]]), int(row[at["DR_grade"]])))
        except (IndexError, ValueError):
            raise ValueError(f"{path}:{line}: expected image, integer quality and DR_grade, got {row}") from None
    return out


def load_fundus_dataset(root: str | Path) -> FundusFolder:
    """Read ``ground_truth.json`` and the two EyeQ label files of a SynthFundus folder.

    Args:
        root: A folder written by :func:`~qualcl.data.synthetic.writer.write_fundus_dataset`.

    Returns:
        The metadata, per-image records and split positions.

    Raises:
        FileNotFoundError: The folder, ``ground_truth.json``, a label file or an image is missing (named).
        ValueError: A key or column is missing, or the CSVs disagree with ``ground_truth.json``.

    Examples:
        >>> import tempfile
        >>> from qualcl.data.synthetic.writer import write_fundus_dataset
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = write_fundus_dataset(tmp, 6, size=64, progress=False)
        ...     folder = load_fundus_dataset(tmp)
        ...     len(folder.records), sum(len(v) for v in folder.splits.values())
        (6, 6)
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"SynthFundus: dataset folder {base} does not exist")
    truth_path = base / "ground_truth.json"
    if not truth_path.is_file():
        raise FileNotFoundError(f"SynthFundus: {truth_path} does not exist")
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    for key in ("metadata", "images"):
        if key not in truth:
            raise ValueError(f"{truth_path} lacks the key {key!r}")
    records: list[dict[str, Any]] = truth["images"]
    by_name: dict[str, int] = {}
    for position, record in enumerate(records):
        missing = [key for key in _RECORD_KEYS if key not in record]
        if missing:
            raise ValueError(f"{truth_path}: record {position} lacks key(s) {missing}")
        image = base / record.get("image_path", f"images/{record['image']}")
        if not image.is_file():
            raise FileNotFoundError(f"SynthFundus: image {image} listed in {truth_path} does not exist")
        by_name[record["image"]] = position
    splits: dict[str, list[int]] = {}
    for split in ("train", "test"):
        csv_path = base / f"Label_EyeQ_{split}.csv"
        positions = []
        for name, quality, grade in _read_split(csv_path):
            if name not in by_name:
                raise ValueError(f"{csv_path}: image {name!r} is not in {truth_path}")
            record = records[by_name[name]]
            if (record["quality"], record["dr_grade"], record["split"]) != (quality, grade, split):
                raise ValueError(f"{csv_path}: labels of {name!r} disagree with {truth_path}")
            positions.append(by_name[name])
        splits[split] = positions
    return FundusFolder(base, truth["metadata"], records, splits)


def _read_rgb(path: Path) -> Tensor:
    array = np.asarray(open_image(path, "RGB"), dtype=np.float32) / np.float32(255.0)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _read_mask(path: Path) -> Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"SynthFundus: mask {path} does not exist")
    return torch.from_numpy(np.asarray(open_image(path, "L")) > 0)


class SyntheticFundusDataset(Dataset[tuple[Tensor, dict[str, Any]]]):
    """A torch ``Dataset`` over a SynthFundus folder.

    Items are ``(image, labels)``: ``image`` a float ``(3, H, W)`` tensor in ``[0, 1]``; ``labels``
    a dict with ``dr_grade``, ``quality`` and ``index`` (ints), ``quality_factors`` (a ``(3,)`` long
    tensor: illumination, blur, spot), ``patient_id`` and ``eye`` (strings), and with
    ``masks=True`` a ``(6, H, W)`` bool tensor of the masks in ``MASK_NAMES`` order. The default
    ``collate_fn`` batches these. Lesion boxes vary in number, so they come from :meth:`boxes`.

    Args:
        root: A folder written by :func:`~qualcl.data.synthetic.writer.write_fundus_dataset`.
        split: ``"train"``, ``"test"`` or ``"all"``.
        transform: Optional function applied to the image tensor.
        masks: Also return the masks.

    Examples:
        >>> import tempfile
        >>> from qualcl.data.synthetic.writer import write_fundus_dataset
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = write_fundus_dataset(tmp, 6, size=64, progress=False)
        ...     image, labels = SyntheticFundusDataset(tmp, "all")[0]
        ...     image.shape, sorted(labels)
        (torch.Size([3, 64, 64]), ['dr_grade', 'eye', 'index', 'patient_id', 'quality', 'quality_factors'])
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transform: Callable[[Tensor], Tensor] | None = None,
        masks: bool = False,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        self.folder = load_fundus_dataset(root)
        positions = self.folder.splits.get(split) if split != "all" else None
        self.records = [self.folder.records[p] for p in positions] if positions is not None else self.folder.records
        self.transform = transform
        self.with_masks = masks

    def __len__(self) -> int:
        return len(self.records)

    def _path(self, record: dict[str, Any]) -> Path:
        relative = str(record.get("image_path", f"images/{record['image']}"))
        return self.folder.root / relative

    def __getitem__(self, item: int) -> tuple[Tensor, dict[str, Any]]:
        record = self.records[item]
        image = _read_rgb(self._path(record))
        if self.transform is not None:
            image = self.transform(image)
        factors = record.get("quality_factors", {})
        labels: dict[str, Any] = {
            "dr_grade": int(record["dr_grade"]),
            "quality": int(record["quality"]),
            "quality_factors": torch.tensor([int(factors.get(k, 0)) for k in ("illumination", "blur", "spot")]),
            "patient_id": str(record["patient_id"]),
            "eye": str(record["eye"]),
            "index": int(record.get("index", item)),
        }
        if self.with_masks:
            stem = Path(record["image"]).stem
            paths = record.get("masks", {})
            labels["masks"] = torch.stack(
                [_read_mask(self.folder.root / paths.get(name, f"masks/{stem}_{name}.png")) for name in MASK_NAMES]
            )
        return image, labels

    def boxes(self, item: int) -> tuple[Tensor, list[str]]:
        """Lesion boxes of item ``item``: a ``(K, 4)`` float tensor ``(x1, y1, x2, y2)`` and the K types."""
        boxes = self.records[item]["boxes"]
        coords = torch.tensor([b[:4] for b in boxes], dtype=torch.float32).view(-1, 4)
        return coords, [str(b[4]) for b in boxes]
