"""Issue 28: readers keep 16-bit depth, refuse contradictory rows and name the file (and row) of every bad input."""

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qualcl.data.images import open_image, read_image, unit_array
from qualcl.data.readers import (
    load_segmentation_sample,
    odir_keyword_labels,
    read_aptos,
    read_drishti_gs,
    read_eyepacs,
    read_eyeq,
    read_idrid_grading,
    read_odir,
)
from qualcl.data.readers.segmentation import SegmentationRecord


def _png(path: Path, array: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8) if array is None else array).save(path)
    return path


# ------------------------------------------------------------------ ODIR grades
@pytest.mark.parametrize(
    ("keywords", "grade"),
    [
        ("non proliferative retinopathy", None),
        ("nonproliferative retinopathy", None),
        ("non-proliferative retinopathy，laser spot", None),
        ("proliferative retinopathy", 4),
        ("proliferative diabetic retinopathy", 4),
        ("mild nonproliferative retinopathy", 1),
        ("moderate non proliferative retinopathy", 2),
        ("severe nonproliferative retinopathy", 3),
    ],
)
def test_odir_non_proliferative_without_severity_has_no_grade(keywords, grade):
    categories, label, dr_grade, _ = odir_keyword_labels(keywords)
    assert "D" in categories and label == 1
    assert dr_grade == grade


def _odir(root: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    lines = ["ID,Left-Fundus,Right-Fundus,Left-Diagnostic Keywords,Right-Diagnostic Keywords"]
    for row in rows:
        lines.append(",".join(f'"{v}"' for v in row))
        for name in row[1:3]:
            _png(root / "images" / name)
    (root / "annotations.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_odir_reader_gives_no_grade_and_refuses_one_image_with_two_labels(tmp_path):
    root = _odir(tmp_path, [("0", "0_left.jpg", "0_right.jpg", "non proliferative retinopathy", "normal fundus")])
    assert [e.dr_grade for e in read_odir(root)] == [None, 0]
    _odir(
        tmp_path,
        [
            ("0", "0_left.jpg", "0_right.jpg", "normal fundus", "normal fundus"),
            ("1", "0_left.jpg", "1_right.jpg", "proliferative retinopathy", "normal fundus"),
        ],
    )
    with pytest.raises(ValueError, match=r"annotations.csv:3: image .*0_left.jpg is listed twice.*annotations.csv:2"):
        read_odir(tmp_path)


# ------------------------------------------------------------------ one image, two grades
def _eyepacs(root: Path, body: str, encoding: str = "utf-8") -> Path:
    for name in ("1_left", "1_right", "2_left"):
        _png(root / "train" / f"{name}.jpeg")
    (root / "trainLabels.csv").write_bytes(("image,level\n" + body).encode(encoding))
    return root


def test_eyepacs_refuses_an_image_listed_with_two_grades(tmp_path):
    _eyepacs(tmp_path, "1_left,0\n1_right,2\n1_left,3\n")
    with pytest.raises(
        ValueError,
        match=r"trainLabels.csv:4: image .*1_left.jpeg is listed twice with different levels: "
        r"0 at .*trainLabels.csv:2 and 3 here",
    ):
        read_eyepacs(tmp_path)
    _eyepacs(tmp_path, "1_left,0\n1_right,2\n1_left.jpeg,0\n")  # the same grade twice: not a contradiction
    assert len(read_eyepacs(tmp_path)) == 3


def test_aptos_and_eyeq_refuse_an_image_listed_with_two_labels(tmp_path):
    for code in ("a1", "b2"):
        _png(tmp_path / "aptos" / "train_images" / f"{code}.png")
    (tmp_path / "aptos" / "train.csv").write_text("id_code,diagnosis\na1,1\nb2,0\na1,4\n")
    with pytest.raises(
        ValueError, match=r"train.csv:4: image .*a1.png is listed twice .*1 at .*train.csv:2 and 4 here"
    ):
        read_aptos(tmp_path / "aptos")
    _png(tmp_path / "eyeq" / "images" / "3_left.png")
    (tmp_path / "eyeq" / "Label_EyeQ_train.csv").write_text(
        ",image,quality,DR_grade\n0,3_left.png,0,1\n1,3_left.png,2,1\n"
    )
    with pytest.raises(
        ValueError, match=r"Label_EyeQ_train.csv:3: image .*3_left.png is listed twice.*\(0, 1\).*\(2, 1\)"
    ):
        read_eyeq(tmp_path / "eyeq")


# ------------------------------------------------------------------ table cells and encodings
def test_a_latin1_csv_is_named_with_its_line(tmp_path):
    _eyepacs(tmp_path, "1_left,0\n2_left,1\n1_right,2 # revisé\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"trainLabels.csv:4: the file is not UTF-8 text \(byte b'\\xe9'"):
        read_eyepacs(tmp_path)


@pytest.mark.parametrize("cell", ["2.5", "two", "", "nan"])
def test_a_non_integer_grade_cell_names_file_and_row(tmp_path, cell):
    _eyepacs(tmp_path, f"1_left,0\n1_right,{cell}\n")
    with pytest.raises(ValueError, match=rf"trainLabels.csv:3: level must be an integer and lie in 0..4, got '{cell}'"):
        read_eyepacs(tmp_path)


def test_idrid_grading_non_integer_cells_name_file_and_row(tmp_path):
    grading = tmp_path / "B. Disease Grading"
    csv = grading / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv"
    csv.parent.mkdir(parents=True)
    _png(grading / "1. Original Images" / "a. Training Set" / "IDRiD_001.jpg")
    csv.write_text("Image name,Retinopathy grade,Risk of macular edema\nIDRiD_001,x,0\n")
    with pytest.raises(ValueError, match=r"Training Labels.csv:2: Retinopathy grade must be an integer .*got 'x'"):
        read_idrid_grading(tmp_path)
    csv.write_text("Image name,Retinopathy grade,Risk of macular edema\nIDRiD_001,2,0\nIDRiD_001,2,1\n")
    with pytest.raises(ValueError, match=r"Training Labels.csv:3: image .*IDRiD_001.jpg is listed twice"):
        read_idrid_grading(tmp_path)


# ------------------------------------------------------------------ bit depth
def _drishti(root: Path, soft: np.ndarray, image: np.ndarray | None = None) -> Path:
    base = root / "Training"
    fundus = np.zeros((40, 40, 3), np.uint8)
    fundus[4:36, 4:36] = 150
    _png(base / "Images" / "drishtiGS_002.png", fundus if image is None else image)
    for task in ("OD", "cup"):
        path = base / "GT" / "drishtiGS_002" / "SoftMap" / f"drishtiGS_002_{task}segSoftmap.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(soft).save(path)
    return root


def test_a_16_bit_soft_map_is_thresholded_at_0_3_of_its_depth(tmp_path):
    soft = np.full((40, 40), round(0.1 * 65535), np.uint16)  # 10 % agreement: background
    soft[:28] = round(0.5 * 65535)  # 70 % of the rows at 50 % agreement: foreground
    _drishti(tmp_path, soft)
    with Image.open(next(tmp_path.rglob("*ODsegSoftmap.png"))) as stored:
        assert stored.mode.startswith("I")  # really a 16-bit file
    (record,) = read_drishti_gs(tmp_path)
    sample = load_segmentation_sample(record, size=40, margin=40)  # no crop: the whole map
    assert float(sample.masks["OD"].float().mean()) == pytest.approx(0.7, abs=0.03)  # PIL's clipping gave 1.0


def test_16_bit_images_keep_their_depth(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    assert read_image(path).mode.startswith("I")
    np.testing.assert_allclose(unit_array(read_image(path)), ramp / 65535.0)
    grey = np.asarray(open_image(path, "L"))
    assert int((grey == 255).sum()) <= 1  # clipping would make 63 of 64 pixels white
    image = np.zeros((40, 40), np.uint16)
    image[4:36, 4:36] = 30000  # 30000 / 65535 · 255 ≈ 117; clipping made it 255
    _drishti(tmp_path / "wide", np.zeros((40, 40), np.uint8), image=image)
    (record,) = read_drishti_gs(tmp_path / "wide")
    sample = load_segmentation_sample(record, size=40, margin=0)
    assert sample.box == (4, 4, 36, 36) and int(sample.image.max()) == 117


# ------------------------------------------------------------------ unreadable and empty files
def test_truncated_non_gzip_and_black_images_name_the_file(tmp_path):
    good = _png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(OSError, match=r"truncated.png: cannot read the image"):
        open_image(truncated)
    fake_gz = tmp_path / "mask.png.gz"
    fake_gz.write_bytes(good.read_bytes())  # a PNG named .gz
    with pytest.raises(OSError, match=r"mask.png.gz: cannot decompress it .*not gzip data"):
        read_image(fake_gz)
    cut_gz = tmp_path / "cut.png.gz"
    cut_gz.write_bytes(gzip.compress(good.read_bytes())[:100])
    with pytest.raises(OSError, match=r"cut.png.gz: cannot decompress it"):
        read_image(cut_gz)
    real_gz = tmp_path / "real.png.gz"
    real_gz.write_bytes(gzip.compress(good.read_bytes()))
    assert read_image(real_gz).size == (64, 64)
    black = _png(tmp_path / "black" / "black.png", np.zeros((16, 16, 3), np.uint8))
    record = SegmentationRecord(black, {}, "black", "drive", "train")
    with pytest.raises(ValueError, match=r"drive: image .*black.png: no pixel above 20: the image is black"):
        load_segmentation_sample(record, size=8)
    mask_record = SegmentationRecord(good, {"vessels": truncated}, "good", "drive", "train")
    with pytest.raises(OSError, match="truncated.png"):
        load_segmentation_sample(mask_record, size=8)
