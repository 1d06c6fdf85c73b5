"""APTOS 2019, ODIR-5K and FIVES readers on fixture trees: layouts, keyword mapping, named errors."""

from pathlib import Path

import numpy as np
import openpyxl
import pytest
from PIL import Image

from qualcl.data.readers import odir_keyword_labels, read_aptos, read_fives, read_odir


def _png(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)


def _xlsx(path: Path, sheets: dict[str, list[list[object]]]):
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


# --------------------------------------------------------------------------------------- APTOS
def test_aptos_reads_train_csv(tmp_path):
    (tmp_path / "train.csv").write_text("id_code,diagnosis\n000c1434d8d7,2\n001639a390f0,4\n")
    _png(tmp_path / "train_images" / "000c1434d8d7.png")
    _png(tmp_path / "train_images" / "001639a390f0.png")
    records = read_aptos(tmp_path)
    assert [(r.image.name, r.dr_grade, r.patient_id, r.eye) for r in records] == [
        ("000c1434d8d7.png", 2, "000c1434d8d7", None),
        ("001639a390f0.png", 4, "001639a390f0", None),
    ]


def test_aptos_errors_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.csv"):
        read_aptos(tmp_path)
    (tmp_path / "train.csv").write_text("id_code,level\nabc,2\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['diagnosis'\]"):
        read_aptos(tmp_path)
    (tmp_path / "train.csv").write_text("id_code,diagnosis\nabc,7\n")
    with pytest.raises(ValueError, match=r"train.csv:2: diagnosis must lie in 0..4, got 7"):
        read_aptos(tmp_path)
    (tmp_path / "train.csv").write_text("id_code,diagnosis\nabc,1\n")
    with pytest.raises(FileNotFoundError, match=r"train.csv:2: image abc.png not found"):
        read_aptos(tmp_path)
    assert read_aptos(tmp_path, check_files=False)[0].image == tmp_path / "train_images" / "abc.png"


# ---------------------------------------------------------------------------------------- ODIR
@pytest.mark.parametrize(
    ("keywords", "expected"),
    [
        ("normal fundus", (("N",), 0, 0, 0)),
        ("moderate non proliferative retinopathy，laser spot", (("D", "O"), 1, 2, 0)),
        ("mild nonproliferative retinopathy", (("D",), 1, 1, 0)),
        ("proliferative diabetic retinopathy", (("D",), 1, 4, 0)),
        ("severe nonproliferative retinopathy，lens dust", (("D",), 1, 3, 1)),
        ("hypertensive retinopathy", (("H",), 5, None, 0)),
        ("suspected glaucoma", (("G",), 2, None, 0)),
        ("cataract", (("C",), 3, None, 0)),
        ("dry age-related macular degeneration", (("A",), 4, None, 0)),
        ("pathological myopia", (("M",), 6, None, 0)),
        ("drusen，epiretinal membrane", (("O",), 7, None, 0)),
        ("normal fundus，low image quality", (("N",), 0, 0, 1)),
        ("lens dust", (("N",), 0, 0, 1)),
        ("normal fundus，cataract", (("C",), 3, None, 0)),
    ],
)
def test_odir_keyword_mapping(keywords, expected):
    assert odir_keyword_labels(keywords) == expected


def test_odir_non_fundus_images_are_left_out():
    assert odir_keyword_labels("anterior segment image") is None
    assert odir_keyword_labels("no fundus image") is None


def _odir_rows():
    return [
        ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
         "Right-Diagnostic Keywords", "N", "D", "G", "C", "A", "H", "M", "O"],
        [0, 69, "Female", "0_left.jpg", "0_right.jpg", "cataract", "normal fundus", 0, 0, 0, 1, 0, 0, 0, 0],
        [1, 57, "Male", "1_left.jpg", "1_right.jpg", "normal fundus", "anterior segment image", 1, 0, 0, 0, 0, 0, 0, 0],
        [2, 42, "Male", "2_left.jpg", "2_right.jpg", "moderate non proliferative retinopathy",
         "mild nonproliferative retinopathy，lens dust", 0, 1, 0, 0, 0, 0, 0, 1],
    ]  # fmt: skip


def test_odir_reads_the_xlsx_sheet_per_eye(tmp_path):
    _xlsx(tmp_path / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx", {"Sheet1": _odir_rows()})
    for name in ("0_left", "0_right", "1_left", "2_left", "2_right"):
        _png(tmp_path / "Training Images" / f"{name}.jpg")
    eyes = read_odir(tmp_path)
    assert [(e.image.name, e.patient_id, e.eye, e.categories, e.label, e.dr_grade, e.quality) for e in eyes] == [
        ("0_left.jpg", "0", "left", ("C",), 3, None, 0),
        ("0_right.jpg", "0", "right", ("N",), 0, 0, 0),
        ("1_left.jpg", "1", "left", ("N",), 0, 0, 0),
        ("2_left.jpg", "2", "left", ("D",), 1, 2, 0),
        ("2_right.jpg", "2", "right", ("D",), 1, 1, 1),
    ]
    assert eyes[4].keywords == ("mild nonproliferative retinopathy", "lens dust")


def test_odir_reads_a_csv_export_too(tmp_path):
    lines = [",".join(f'"{v}"' for v in row) for row in _odir_rows()]
    (tmp_path / "annotations.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    eyes = read_odir(tmp_path, check_files=False)
    assert len(eyes) == 5 and eyes[0].image == tmp_path / "Training Images" / "0_left.jpg"


def test_odir_errors_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="none of the annotation sheets"):
        read_odir(tmp_path)
    _xlsx(tmp_path / "data.xlsx", {"Sheet1": [["ID", "Left-Fundus", "Right-Fundus"], [0, "0_left.jpg", "0_right.jpg"]]})
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['Left-Diagnostic Keywords'"):
        read_odir(tmp_path)
    _xlsx(tmp_path / "data.xlsx", {"Sheet1": _odir_rows()})
    with pytest.raises(FileNotFoundError, match=r"data.xlsx:2: image '0_left.jpg' not found"):
        read_odir(tmp_path)


# --------------------------------------------------------------------------------------- FIVES
def _fives(tmp_path: Path, masks: str = "Ground truth") -> Path:
    for split, names in (("train", ["1_A", "2_D", "10_N"]), ("test", ["3_G"])):
        for name in names:
            _png(tmp_path / split / "Original" / f"{name}.png")
            _png(tmp_path / split / masks / f"{name}.png")
    return tmp_path


def test_fives_reads_categories_masks_and_quality(tmp_path):
    root = _fives(tmp_path)
    _xlsx(
        root / "Quality Assessment.xlsx",
        {
            "train": [["Number", "Disease", "IC", "Blur", "LC"], [1, "AMD", 1, 1, 1], [2, "DR", 1, 0, 1],
                      [10, "Normal", 0, 1, 1]],
            "test": [["Number", "Disease", "IC", "Blur", "LC"], [3, "Glaucoma", 1, 1, 1]],
        },
    )  # fmt: skip
    train = read_fives(root, "train")
    assert [(r.number, r.category, r.label, r.mask.name, r.good_quality) for r in train] == [
        (1, "A", 3, "1_A.png", True),
        (2, "D", 1, "2_D.png", False),
        (10, "N", 0, "10_N.png", False),
    ]
    assert train[1].quality == {"IC": 1, "Blur": 0, "LC": 1}
    test = read_fives(root, "test")
    assert [(r.category, r.split, r.patient_id) for r in test] == [("G", "test", "test/3")]


def test_fives_accepts_the_misspelt_mask_folder_and_no_quality_sheet(tmp_path):
    root = _fives(tmp_path, masks="Groud truth")
    records = read_fives(root, "train")
    assert len(records) == 3 and records[0].quality is None and records[0].good_quality is None


def test_fives_errors_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train/Original does not exist"):
        read_fives(tmp_path)
    _png(tmp_path / "train" / "Original" / "1_A.png")
    with pytest.raises(FileNotFoundError, match="none of the mask folders"):
        read_fives(tmp_path)
    _png(tmp_path / "train" / "Ground truth" / "2_A.png")
    with pytest.raises(FileNotFoundError, match=r"vessel mask .*1_A.png of 1_A.png does not exist"):
        read_fives(tmp_path)
    _png(tmp_path / "train" / "Original" / "x.png")
    _png(tmp_path / "train" / "Ground truth" / "1_A.png")
    with pytest.raises(ValueError, match=r"x.png is not named"):
        read_fives(tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        read_fives(tmp_path, "val")
