"""Segmentation readers on fixture trees in each dataset's layout; the code's ROI crop and mask thresholds."""

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qualcl.data.readers import (
    SEGMENTATION_DATASETS,
    fundus_roi,
    load_segmentation_sample,
    read_segmentation,
)

H, W = 40, 48


def _fundus(seed: int = 0) -> np.ndarray:
    """A bright disc (the fundus) on black, off-centre: rows 6-33, cols 10-41."""
    rng = np.random.default_rng(seed)
    image = np.zeros((H, W, 3), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - 20) ** 2 + (xx - 26) ** 2 <= 14**2
    image[disc] = rng.integers(60, 250, (int(disc.sum()), 3))
    return image


def _mask() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[18:22, 12:40] = 255  # a horizontal "vessel"
    return mask


def _save(array: np.ndarray, path: Path, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    if path.name.endswith(".gz"):
        buffer = io.BytesIO()
        image.save(buffer, format="PPM")
        path.write_bytes(gzip.compress(buffer.getvalue()))
    else:
        image.save(path)


def _tree(dataset: str, root: Path) -> Path:
    if dataset == "drive":
        for word, numbers in (("training", (21, 22)), ("test", (1, 2))):
            for n in numbers:
                _save(_fundus(n), root / word / "images" / f"{n:02d}_{word}.tif")
                _save(_mask(), root / word / "1st_manual" / f"{n:02d}_manual1.gif", "P")
    elif dataset == "stare":
        for n in (1, 2, 3):
            _save(_fundus(n), root / "stare-images" / f"im{n:04d}.ppm.gz")
        for n in (1, 2):  # im0003 is not annotated
            _save(np.repeat(_mask()[:, :, None], 3, axis=2), root / "labels-ah" / f"im{n:04d}.ah.ppm.gz")
    elif dataset == "chase":
        for name in ("Image_01L", "Image_01R"):
            _save(_fundus(), root / f"{name}.jpg")
            _save(_mask(), root / f"{name}_1stHO.png")
            _save(_mask(), root / f"{name}_2ndHO.png")
    elif dataset == "hrf":
        for name in ("01_dr", "01_h"):
            _save(_fundus(), root / "images" / f"{name}.JPG")
            _save(_mask(), root / "manual1" / f"{name}.tif")
    elif dataset == "idrid":
        base = root / "A. Segmentation"
        for folder in ("a. Training Set", "b. Testing Set"):
            _save(_fundus(), base / "1. Original Images" / folder / "IDRiD_01.jpg")
            _save(_mask(), base / "2. All Segmentation Groundtruths" / folder / "5. Optic Disc" / "IDRiD_01_OD.tif")
            _save(_mask(), base / "2. All Segmentation Groundtruths" / folder / "3. Hard Exudates" / "IDRiD_01_EX.tif")
    elif dataset == "drishti":
        for split, gt in (("Training", "GT"), ("Test", "Test_GT")):
            _save(_fundus(), root / split / "Images" / "drishtiGS_002.png")
            soft = root / split / gt / "drishtiGS_002" / "SoftMap"
            od = np.zeros((H, W), np.uint8)
            od[10:30, 14:38] = 64  # one expert of four: 0.25 < 0.3, not foreground
            od[14:26, 18:34] = 255
            _save(od, soft / "drishtiGS_002_ODsegSoftmap.png")
            _save(_mask(), soft / "drishtiGS_002_cupsegSoftmap.png")
    return root


@pytest.mark.parametrize("dataset", sorted(SEGMENTATION_DATASETS))
def test_every_reader_reads_its_layout_and_loads_with_the_codes_preprocessing(dataset, tmp_path):
    root = _tree(dataset, tmp_path / dataset)
    split = None if dataset in ("stare", "chase", "hrf") else "test"
    records = read_segmentation(dataset, root, split)
    assert records and all(set(r.masks) == set(SEGMENTATION_DATASETS[dataset]) for r in records)
    if dataset == "stare":
        assert [r.name for r in records] == ["im0001", "im0002"]
    sample = load_segmentation_sample(records[0], size=32)
    assert sample.image.shape == (3, 32, 32)
    assert sample.box == (0, 0, H, W) or sample.box[2] - sample.box[0] < H
    for task, mask in sample.masks.items():
        assert mask.shape == (32, 32) and mask.dtype.is_floating_point is False
        assert bool(mask.any()), task


def test_the_roi_is_the_largest_bright_component_plus_the_margin():
    image = _fundus()
    image[0:2, 0:2] = 255  # a small bright speck in the corner: not the largest component
    assert fundus_roi(image, margin=2) == (4, 10, 37, 43)
    assert fundus_roi(image, margin=16) == (0, 0, H, W)
    with pytest.raises(ValueError, match="black"):
        fundus_roi(np.zeros((4, 4, 3), np.uint8))


def test_masks_follow_the_crop_and_soft_maps_are_thresholded_at_0_3(tmp_path):
    root = _tree("drishti", tmp_path / "d")
    record = read_segmentation("drishti", root, "train")[0]
    sample = load_segmentation_sample(record, size=H, margin=0)
    top, left, bottom, right = sample.box
    assert (top, left, bottom, right) == (6, 12, 35, 41)
    od = sample.masks["OD"]
    # only the 255 core survives the 0.3·255 threshold: its area ≈ 12 × 16 px scaled by the resize
    scale = (H / (bottom - top)) * (H / (right - left))
    assert abs(int(od.sum()) - 12 * 16 * scale) < 0.15 * 12 * 16 * scale


def test_wrong_layouts_fail_with_named_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="DRIVE: folder .*training"):
        read_segmentation("drive", tmp_path)
    root = _tree("drive", tmp_path / "drive")
    (root / "training" / "1st_manual" / "21_manual1.gif").unlink()
    with pytest.raises(FileNotFoundError, match="no mask for 21_training.tif"):
        read_segmentation("drive", root, "train")
    with pytest.raises(ValueError, match="no train/test split"):
        read_segmentation("stare", root, "train")
    with pytest.raises(ValueError, match="unknown segmentation dataset"):
        read_segmentation("fives", root)
    hrf = _tree("hrf", tmp_path / "hrf")
    _save(np.zeros((H + 2, W), np.uint8), hrf / "manual1" / "01_dr.tif")
    with pytest.raises(ValueError, match="48 × 42 but its image"):
        load_segmentation_sample(read_segmentation("hrf", hrf)[0])


def test_rite_vessel_folder_takes_precedence_over_drive_manuals(tmp_path):
    root = _tree("drive", tmp_path / "rite")
    _save(_mask(), root / "test" / "vessel" / "01_test.png")
    _save(_mask(), root / "test" / "vessel" / "02_test.png")
    records = read_segmentation("drive", root, "test")
    assert records[0].masks["vessels"] == root / "test" / "vessel" / "01_test.png"
