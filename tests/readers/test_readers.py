from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qualcl.data.readers import (
    NIH_FINDINGS,
    findings_to_multi_hot,
    load_mask,
    mask_to_boxes,
    read_eyeq,
    read_idrid_grading,
    read_idrid_segmentation,
    read_nih_boxes,
    read_nih_cxr14,
)


def _png(path: Path, array=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), np.uint8) if array is None else array).save(path)


# ---------------------------------------------------------------- EyeQ
def _eyeq(tmp_path: Path, rows: str, header: str = ",image,quality,DR_grade") -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "Label_EyeQ_train.csv").write_text(header + "\n" + rows)
    return tmp_path


def test_eyeq_reads_rows_and_accepts_png_crops(tmp_path):
    root = _eyeq(tmp_path, "0,10009_left.jpeg,0,0\n1,10009_right.jpeg,2,3\n")
    _png(root / "images" / "10009_left.png")
    _png(root / "images" / "10009_right.jpeg")
    records = read_eyeq(root, "train")
    assert [(r.image.name, r.quality, r.dr_grade, r.patient_id, r.eye) for r in records] == [
        ("10009_left.png", 0, 0, "10009", "left"),
        ("10009_right.jpeg", 2, 3, "10009", "right"),
    ]


def test_eyeq_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="Label_EyeQ_test.csv"):
        read_eyeq(tmp_path, "test")
    root = _eyeq(tmp_path, "0,1_left.jpeg,0\n", header=",image,quality")
    with pytest.raises(ValueError, match="DR_grade"):
        read_eyeq(root)


def test_eyeq_bad_values_and_missing_images(tmp_path):
    root = _eyeq(tmp_path, "0,1_left.jpeg,3,0\n")
    with pytest.raises(ValueError, match="Label_EyeQ_train.csv:2.*quality"):
        read_eyeq(root, check_files=False)
    (root / "data" / "Label_EyeQ_train.csv").write_text(",image,quality,DR_grade\n0,1_left.jpeg,0,1\n")
    with pytest.raises(FileNotFoundError, match="1_left.jpeg"):
        read_eyeq(root)
    assert read_eyeq(root, check_files=False)[0].dr_grade == 1
    with pytest.raises(ValueError, match="split"):
        read_eyeq(root, "val")


# ---------------------------------------------------------------- IDRiD
def _idrid(tmp_path: Path) -> Path:
    grading = tmp_path / "B. Disease Grading"
    csv = grading / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("Image name,Retinopathy grade,Risk of macular edema ,,\nIDRiD_001,3,2,,\nIDRiD_002,0,0,,\n,,,,\n")
    for name in ("IDRiD_001", "IDRiD_002"):
        _png(grading / "1. Original Images" / "a. Training Set" / f"{name}.jpg")
    seg = tmp_path / "A. Segmentation"
    _png(seg / "1. Original Images" / "a. Training Set" / "IDRiD_01.jpg")
    mask = np.zeros((8, 8), np.uint8)
    mask[1:3, 2:5] = 255
    mask[6, 6] = 255
    _png(
        seg / "2. All Segmentation Groundtruths" / "a. Training Set" / "1. Microaneurysms" / "IDRiD_01_MA.tif",
        mask,
    )
    return tmp_path


def test_idrid_grading_strips_columns_and_skips_empty(tmp_path):
    records = read_idrid_grading(_idrid(tmp_path))
    assert [(r.image.name, r.dr_grade, r.dme_risk) for r in records] == [
        ("IDRiD_001.jpg", 3, 2),
        ("IDRiD_002.jpg", 0, 0),
    ]
    with pytest.raises(FileNotFoundError, match="Testing Labels"):
        read_idrid_grading(tmp_path, "test")


def test_idrid_segmentation_masks_and_boxes(tmp_path):
    records = read_idrid_segmentation(_idrid(tmp_path))
    assert len(records) == 1
    assert sorted(records[0].masks) == ["MA"]
    boxes = mask_to_boxes(load_mask(records[0].masks["MA"]))
    assert boxes == [(2, 1, 5, 3), (6, 6, 7, 7)]
    with pytest.raises(FileNotFoundError, match="image folder .*b. Testing Set"):
        read_idrid_segmentation(tmp_path, "test")


def test_mask_to_boxes_joins_diagonal_neighbours_and_filters_area():
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = mask[1, 1] = True
    mask[4, 4] = True
    assert mask_to_boxes(mask) == [(0, 0, 2, 2), (4, 4, 5, 5)]
    assert mask_to_boxes(mask, min_area=2) == [(0, 0, 2, 2)]
    with pytest.raises(ValueError, match="mask"):
        mask_to_boxes(np.zeros((2, 2, 2), bool))


# ---------------------------------------------------------------- NIH ChestX-ray14
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def _nih(tmp_path: Path) -> Path:
    (tmp_path / "Data_Entry_2017.csv").write_text(
        HEADER
        + "\n00000001_000.png,Cardiomegaly|Emphysema,0,1,058Y,M,PA,2682,2749,0.143,0.143,\n"
        + "00000002_000.png,No Finding,0,2,150,F,AP,2500,2048,0.168,0.168,\n"
    )
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n")
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n")
    for name in ("00000001_000.png", "00000002_000.png"):
        _png(tmp_path / "images_001" / "images" / name)
    return tmp_path


def test_nih_parses_bracket_header_ages_and_splits(tmp_path):
    root = _nih(tmp_path)
    records = read_nih_cxr14(root)
    assert [(r.findings, r.patient_id, r.age, r.sex, r.view) for r in records] == [
        (("Cardiomegaly", "Emphysema"), "1", 58, "M", "PA"),
        ((), "2", None, "F", "AP"),
    ]
    assert [r.image.name for r in read_nih_cxr14(root, "test")] == ["00000002_000.png"]
    hot = findings_to_multi_hot(records)
    assert hot.shape == (2, 14)
    assert hot[0, NIH_FINDINGS.index("Cardiomegaly")] == 1
    assert hot[1].sum() == 0


def test_nih_boxes_read_by_position(tmp_path):
    (tmp_path / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000001_000.png,Cardiomegaly,10.5,20,30,40,,,\n"
        "00000001_000.png,Infiltrate,0,0,5,5\n"
        "00000003_000.png,Mass,1,2,3,4\n"
    )
    boxes = read_nih_boxes(tmp_path)
    assert boxes == {
        "00000001_000.png": [(10.5, 20.0, 40.5, 60.0, "Cardiomegaly"), (0.0, 0.0, 5.0, 5.0, "Infiltrate")],
        "00000003_000.png": [(1.0, 2.0, 4.0, 6.0, "Mass")],
    }


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("x.png,Mass,1,2,3\n", "expected image, label"),
        ("x.png,Mass,1,2,a,4\n", "not numbers"),
        ("x.png,Mass,1,2,-3,4\n", "negative box size"),
    ],
)
def test_nih_boxes_errors(tmp_path, body, match):
    with pytest.raises(FileNotFoundError, match="BBox_List_2017.csv"):
        read_nih_boxes(tmp_path)
    (tmp_path / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n" + body)
    with pytest.raises(ValueError, match=match):
        read_nih_boxes(tmp_path)
    (tmp_path / "BBox_List_2017.csv").write_text("Name,Label\n")
    with pytest.raises(ValueError, match="expected the header"):
        read_nih_boxes(tmp_path)


def test_nih_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data_Entry_2017"):
        read_nih_cxr14(tmp_path)
    root = _nih(tmp_path)
    (root / "test_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test_list.txt"):
        read_nih_cxr14(root, "test")
    (root / "images_001" / "images" / "00000002_000.png").unlink()
    with pytest.raises(FileNotFoundError, match="00000002_000.png"):
        read_nih_cxr14(root)
    (root / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels\nx.png,Mass\n")
    with pytest.raises(ValueError, match="Patient ID"):
        read_nih_cxr14(root)
