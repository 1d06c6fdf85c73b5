"""Fundus segmentation sets of local discrimination: DRIVE/RITE, STARE, CHASE_DB1, HRF, IDRiD, Drishti-GS1.

Each reader returns :class:`SegmentationRecord` rows (an image and its mask files by task name);
:func:`read_segmentation` dispatches by dataset name and :func:`load_segmentation_sample` reads one
record with the local-discrimination code's pre-processing (:func:`fundus_roi`: any channel
``> 20``, the largest 8-connected component's box plus a 16-px margin, then a square resize; masks
resized bilinearly and re-thresholded at 0.3, soft maps such as Drishti-GS1's at 0.3 of their bit depth first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from scipy import ndimage
from torch import Tensor

from qualcl.data.images import read_image, to_8bit, unit_array
from qualcl.data.readers.idrid import read_idrid_segmentation

__all__ = [
    "SEGMENTATION_DATASETS",
    "SegmentationRecord",
    "SegmentationSample",
    "fundus_roi",
    "load_segmentation_sample",
    "read_chase_db1",
    "read_drishti_gs",
    "read_drive",
    "read_hrf",
    "read_segmentation",
    "read_stare",
]

#: The masks each dataset provides, by task name (what :func:`read_segmentation` records carry).
SEGMENTATION_DATASETS: dict[str, tuple[str, ...]] = {
    "drive": ("vessels",),
    "stare": ("vessels",),
    "chase": ("vessels",),
    "hrf": ("vessels",),
    "idrid": ("OD", "EX"),
    "drishti": ("OD", "cup"),
}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".ppm", ".bmp", ".gif")


@dataclass(frozen=True)
class SegmentationRecord:
    """One image of a segmentation set with the masks it has.

    Attributes:
        image: The image file.
        masks: Task name (``"vessels"``, ``"OD"``, ``"EX"``, ``"cup"``) → mask file.
        name: The image's identifier within the dataset (its file stem).
        dataset: Key in :data:`SEGMENTATION_DATASETS`.
        split: ``"train"`` / ``"test"`` where the dataset defines them, else ``None``.
        soft: Whether the masks are soft maps (averaged annotations) to threshold at 0.3 of the bit depth.
    """

    image: Path
    masks: dict[str, Path] = field(default_factory=dict)
    name: str = ""
    dataset: str = ""
    split: str | None = None
    soft: bool = False


class SegmentationSample(NamedTuple):
    """One pre-processed image and its masks.

    Attributes:
        image: ``(3, S, S)`` uint8.
        masks: Task name → ``(S, S)`` bool.
        box: The ROI ``(top, left, bottom, right)`` in the original image's pixels.
    """

    image: Tensor
    masks: dict[str, Tensor]
    box: tuple[int, int, int, int]


def _folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder {path} does not exist")
    return path


def _images(folder: Path, what: str, suffixes: tuple[str, ...] = _IMAGE_SUFFIXES) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))
    if not files:
        raise FileNotFoundError(f"{what}: no images ({', '.join(suffixes)}) in {folder}")
    return files


def _split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _mask(candidates: list[Path], what: str, image: Path) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{what}: no mask for {image.name}; looked for {', '.join(str(p) for p in candidates)}")


def read_drive(root: str | Path, split: str = "train") -> list[SegmentationRecord]:
    """DRIVE, or its RITE relabelling: ``{training,test}/images/{n}_{training,test}.tif`` and the vessel masks.

    RITE's ``vessel/{n}_{split}.png`` is used when the split has a ``vessel`` folder (the local-
    discrimination code's "Vessel RITE" task), else DRIVE's ``1st_manual/{n}_manual1.gif``.

    Args:
        root: Folder holding ``training`` and ``test``.
        split: ``"train"`` or ``"test"``.

    Raises:
        FileNotFoundError: A folder or an image's mask is missing (named).

    Examples:
        >>> records = read_drive("DRIVE", "test")  # doctest: +SKIP
        >>> records[0].name, sorted(records[0].masks)  # doctest: +SKIP
        ('01_test', ['vessels'])

    Reference:
        Staal et al., "Ridge-based vessel segmentation in color images of the retina", TMI 2004;
        Hu et al., "Automated separation of binary overlapping trees in low-contrast color retinal
        images" (RITE), MICCAI 2013.
    """
    split = _split(split)
    word = "training" if split == "train" else "test"
    base = _folder(Path(root) / word, "DRIVE")
    images = _folder(base / "images", "DRIVE")
    rite = (base / "vessel").is_dir()
    records = []
    for image in _images(images, "DRIVE"):
        number = image.stem.split("_")[0]
        if rite:
            candidates = [base / "vessel" / f"{image.stem}{ext}" for ext in (".png", ".gif", ".tif")]
        else:
            candidates = [base / "1st_manual" / f"{number}_manual1{ext}" for ext in (".gif", ".png", ".tif")]
        mask = _mask(candidates, "RITE" if rite else "DRIVE", image)
        records.append(SegmentationRecord(image, {"vessels": mask}, image.stem, "drive", split))
    return records


def read_stare(root: str | Path, annotator: str = "ah") -> list[SegmentationRecord]:
    """STARE: ``stare-images/im0001.ppm`` and ``labels-ah/im0001.ah.ppm`` (or ``labels-vk``), ``.gz`` or not.

    STARE has no official split (the code evaluates all 20 annotated images).

    Args:
        root: Folder holding ``stare-images`` and ``labels-ah`` / ``labels-vk``.
        annotator: ``"ah"`` (Hoover, the usual ground truth) or ``"vk"``.

    Examples:
        >>> records = read_stare("STARE")  # doctest: +SKIP
        >>> records[0].masks["vessels"].name  # doctest: +SKIP
        'im0001.ah.ppm'

    Reference:
        Hoover, Kouznetsova and Goldbaum, "Locating blood vessels in retinal images by piecewise
        threshold probing of a matched filter response", TMI 2000.
    """
    if annotator not in ("ah", "vk"):
        raise ValueError(f"annotator must be 'ah' or 'vk', got {annotator!r}")
    base = Path(root)
    images = _folder(base / "stare-images", "STARE")
    labels = _folder(base / f"labels-{annotator}", "STARE")
    records = []
    files = _images(images, "STARE", (".ppm", ".ppm.gz", ".png"))
    for image in files:
        stem = image.name.split(".")[0]
        candidates = [labels / f"{stem}.{annotator}{ext}" for ext in (".ppm", ".ppm.gz", ".png")]
        if not any(p.is_file() for p in candidates):
            continue  # STARE ships 400 images, 20 of them annotated
        records.append(SegmentationRecord(image, {"vessels": _mask(candidates, "STARE", image)}, stem, "stare"))
    if not records:
        raise FileNotFoundError(f"STARE: none of the {len(files)} images in {images} has a mask in {labels}")
    return records


def read_chase_db1(root: str | Path, annotator: str = "1st") -> list[SegmentationRecord]:
    """CHASE_DB1: ``Image_01L.jpg`` with ``Image_01L_1stHO.png`` (or ``_2ndHO``) in one folder.

    Examples:
        >>> read_chase_db1("CHASEDB1")[0].name  # doctest: +SKIP
        'Image_01L'

    Reference:
        Fraz et al., "An ensemble classification-based approach applied to retinal blood vessel
        segmentation", IEEE TBME 2012.
    """
    if annotator not in ("1st", "2nd"):
        raise ValueError(f"annotator must be '1st' or '2nd', got {annotator!r}")
    base = _folder(Path(root), "CHASE_DB1")
    files = [p for p in _images(base, "CHASE_DB1", (".jpg", ".jpeg", ".png")) if "HO" not in p.stem]
    if not files:
        raise FileNotFoundError(f"CHASE_DB1: no Image_NNx.jpg in {base}")
    return [
        SegmentationRecord(
            image,
            {"vessels": _mask([base / f"{image.stem}_{annotator}HO.png"], "CHASE_DB1", image)},
            image.stem,
            "chase",
        )
        for image in files
    ]


def read_hrf(root: str | Path) -> list[SegmentationRecord]:
    """HRF: ``images/01_dr.JPG`` with ``manual1/01_dr.tif`` (healthy ``_h``, DR ``_dr``, glaucoma ``_g``).

    Examples:
        >>> read_hrf("HRF")[0].masks["vessels"].name  # doctest: +SKIP
        '01_dr.tif'

    Reference:
        Budai et al., "Robust vessel segmentation in fundus images", International Journal of
        Biomedical Imaging, 2013.
    """
    base = Path(root)
    images = _folder(base / "images", "HRF")
    manual = _folder(base / "manual1", "HRF")
    return [
        SegmentationRecord(
            image,
            {"vessels": _mask([manual / f"{image.stem}{ext}" for ext in (".tif", ".png")], "HRF", image)},
            image.stem,
            "hrf",
        )
        for image in _images(images, "HRF", (".jpg", ".jpeg", ".png", ".tif"))
    ]


def read_drishti_gs(root: str | Path, split: str = "train") -> list[SegmentationRecord]:
    """Drishti-GS1: ``Training/Images/drishtiGS_002.png`` with the disc and cup soft maps.

    Ground truth: ``Training/GT/<id>/SoftMap/<id>_ODsegSoftmap.png`` and ``_cupsegSoftmap.png``
    (``Test/Test_GT/...`` for the test split); soft maps average the experts and are thresholded
    at 0.3 of the bit depth (0.3·255 for 8-bit maps) when loaded.

    Examples:
        >>> sorted(read_drishti_gs("Drishti-GS1_files")[0].masks)  # doctest: +SKIP
        ['OD', 'cup']

    Reference:
        Sivaswamy et al., "Drishti-GS: Retinal image dataset for optic nerve head (ONH)
        segmentation", ISBI 2014.
    """
    split = _split(split)
    base = Path(root) / ("Training" if split == "train" else "Test")
    images = _folder(base / "Images", "Drishti-GS1")
    truth = next((base / n for n in ("GT", "Test_GT") if (base / n).is_dir()), None)
    if truth is None:
        raise FileNotFoundError(f"Drishti-GS1: neither {base / 'GT'} nor {base / 'Test_GT'} exists")
    records = []
    for image in _images(images, "Drishti-GS1", (".png",)):
        soft = truth / image.stem / "SoftMap"
        masks = {
            "OD": _mask([soft / f"{image.stem}_ODsegSoftmap.png"], "Drishti-GS1", image),
            "cup": _mask([soft / f"{image.stem}_cupsegSoftmap.png"], "Drishti-GS1", image),
        }
        records.append(SegmentationRecord(image, masks, image.stem, "drishti", split, soft=True))
    return records


def read_segmentation(dataset: str, root: str | Path, split: str | None = None) -> list[SegmentationRecord]:
    """Read a segmentation set by name (:data:`SEGMENTATION_DATASETS`).

    ``split`` applies to DRIVE, IDRiD and Drishti-GS1 (``"train"`` / ``"test"``, default
    ``"train"``); STARE, CHASE_DB1 and HRF have none (``None``: all images).

    Examples:
        >>> read_segmentation("drive", "DRIVE", "test")  # doctest: +SKIP
    """
    if dataset not in SEGMENTATION_DATASETS:
        raise ValueError(f"unknown segmentation dataset {dataset!r}; known: {sorted(SEGMENTATION_DATASETS)}")
    if dataset in ("stare", "chase", "hrf"):
        if split not in (None, "all"):
            raise ValueError(f"{dataset} has no train/test split; pass split=None (got {split!r})")
        return {"stare": read_stare, "chase": read_chase_db1, "hrf": read_hrf}[dataset](root)
    split = split or "train"
    if dataset == "drive":
        return read_drive(root, split)
    if dataset == "drishti":
        return read_drishti_gs(root, split)
    records = []
    for record in read_idrid_segmentation(root, split):
        masks = {task: record.masks[task] for task in SEGMENTATION_DATASETS["idrid"] if task in record.masks}
        records.append(SegmentationRecord(record.image, masks, record.image.stem, "idrid", split))
    return records


def _read_array(path: Path) -> NDArray[np.uint8]:
    """An image file (``.gz``-compressed allowed) as ``(H, W)`` or ``(H, W, 3)`` uint8, 16-bit scaled by its depth."""
    image = to_8bit(read_image(path))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB" if image.mode in ("RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV") else "L")
    array: NDArray[np.uint8] = np.asarray(image)
    return array


def _read_mask(path: Path) -> NDArray[np.float64]:
    """A mask file as ``(H, W)`` fractions of its bit depth (the largest channel of a colour mask)."""
    fraction = unit_array(read_image(path))
    return fraction.max(axis=2) if fraction.ndim == 3 else fraction


def fundus_roi(image: NDArray[np.uint8], *, threshold: int = 20, margin: int = 16) -> tuple[int, int, int, int]:
    """The fundus's box ``(top, left, bottom, right)``: largest 8-connected region above ``threshold``, plus ``margin``.

    A pixel belongs to the fundus when any channel exceeds ``threshold``; the box of the largest
    component is grown by ``margin`` pixels and clipped to the image (the local-discrimination
    code's ``identify_roi``).

    Args:
        image: ``(H, W, 3)`` (or ``(H, W)``) uint8.
        threshold: Intensity threshold.
        margin: Pixels added on each side.

    Raises:
        ValueError: No pixel exceeds the threshold (an all-black image).

    Examples:
        >>> import numpy as np
        >>> image = np.zeros((100, 120, 3), np.uint8); image[30:70, 40:90] = 200
        >>> fundus_roi(image)
        (14, 24, 86, 106)
    """
    bright: NDArray[np.bool_] = np.asarray(image > threshold)
    if bright.ndim == 3:
        bright = np.asarray(bright.any(axis=2))
    labels, count = ndimage.label(bright, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        raise ValueError(f"no pixel above {threshold}: the image is black, no fundus region to crop")
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    rows, cols = ndimage.find_objects(labels)[largest - 1]
    h, w = bright.shape
    return (
        max(rows.start - margin, 0),
        max(cols.start - margin, 0),
        min(rows.stop + margin, h),
        min(cols.stop + margin, w),
    )


def _resize(array: NDArray[np.uint8], size: int) -> Tensor:
    x = torch.from_numpy(np.array(array, dtype=np.float32))
    x = x.permute(2, 0, 1)[None] if x.ndim == 3 else x[None, None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]


def load_segmentation_sample(
    record: SegmentationRecord, size: int = 512, *, threshold: int = 20, margin: int = 16, mask_threshold: float = 0.3
) -> SegmentationSample:
    """Read a record with the code's pre-processing: ROI crop, square resize, masks re-thresholded.

    The image is cropped to :func:`fundus_roi` and resized bilinearly to ``size`` × ``size``; each
    mask is binarised (``> 0``; soft maps ``> 0.3`` of the bit depth), cropped to the same box, resized
    bilinearly and thresholded at ``mask_threshold`` (0.3 in the code). Mask values are read as
    fractions of the file's bit depth, so a 16-bit soft map is thresholded at 0.3 · 65535 (not
    clipped to 8 bits first), and 16-bit images are scaled to 8 bits by their depth.

    Args:
        record: A reader's record.
        size: Output side.
        threshold: ROI intensity threshold.
        margin: ROI margin.
        mask_threshold: Threshold of the resized masks, in ``[0, 1)``.

    Returns:
        :class:`SegmentationSample`.

    Raises:
        ValueError: A mask's size differs from its image's, or the image is black (no fundus to
            crop); the file is named.
        OSError: A file is truncated, not an image, or a ``.gz`` that is not gzip data (named).

    Examples:
        >>> sample = load_segmentation_sample(read_drive("DRIVE")[0], size=256)  # doctest: +SKIP
        >>> sample.image.shape, sample.masks["vessels"].dtype  # doctest: +SKIP
        (torch.Size([3, 256, 256]), torch.bool)
    """
    image = _read_array(record.image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    try:
        top, left, bottom, right = fundus_roi(image, threshold=threshold, margin=margin)
    except ValueError as error:
        raise ValueError(f"{record.dataset or 'segmentation'}: image {record.image}: {error}") from None
    out = _resize(image[top:bottom, left:right], size).round().clamp(0, 255).to(torch.uint8)
    masks = {}
    for task, path in record.masks.items():
        mask = _read_mask(path)
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"{record.dataset}: mask {path} is {mask.shape[1]} × {mask.shape[0]} but its image "
                f"{record.image.name} is {image.shape[1]} × {image.shape[0]}"
            )
        binary = (mask > 0.3) if record.soft else (mask > 0)
        resized = _resize(binary[top:bottom, left:right].astype(np.uint8), size)[0]
        masks[task] = resized > mask_threshold
    return SegmentationSample(out, masks, (top, left, bottom, right))
