"""Readers of MKCNet's datasets (DeepDRiD, DRAC 2022, EyeQ, CXR-IQAD, CT-IQAD) on fixture trees."""

import zipfile
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
from PIL import Image

from qualcl.data.readers.deepdrid import read_deepdrid
from qualcl.data.readers.drac import read_drac
from qualcl.data.readers.eyeq import FundusRecord
from qualcl.data.readers.eyeq_quality import eyeq_to_quality_records, read_eyeq_quality
from qualcl.data.readers.iqad import build_ct_iqad, build_cxr_iqad
from qualcl.data.readers.kermany import read_kermany_pneumonia
from qualcl.data.readers.low_dose import load_quality_image, simulate_low_dose, write_low_dose_images
from qualcl.data.readers.quality import (
    QUALITY_SCHEMES,
    QualityLabelledRecord,
    is_low_quality,
    mkcnet_diagnosis,
    mkcnet_labels,
    mkcnet_quality,
    quality_scheme,
)


def _img(path: Path, size=(4, 4), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path, format="PNG")


def _record(dataset="eyeq", diagnosis=0, quality=0, **kw):
    return QualityLabelledRecord(Path("x.png"), diagnosis, quality, None, dataset, dataset, **kw)


# ---------------------------------------------------------------- canonical record and schemes
def test_schemes_are_best_first_and_match_mkcnet_codes():
    assert quality_scheme("eyeq").quality_names == ("Good", "Usable", "Reject")
    assert quality_scheme("deepdrid").quality_names == ("good", "not good")
    assert quality_scheme("drac").quality_names == ("excellent", "good", "poor")
    assert quality_scheme("cxr_iqad").quality_names == ("HQ child", "LQ child", "LQ adult")
    assert quality_scheme("ct_iqad").quality_names == ("HQ", "LQ")
    # MKCNet configs: NUM_T, NUM_IQ per dataset.
    sizes = {name: (s.num_mkcnet_diagnosis, s.num_mkcnet_quality) for name, s in QUALITY_SCHEMES.items()}
    assert sizes == {"eyeq": (3, 3), "deepdrid": (3, 2), "drac": (3, 2), "cxr_iqad": (2, 3), "ct_iqad": (2, 2)}
    # The best level is MKCNet's HQ code everywhere (EyeQ 2, DeepDRiD/DRAC/CT 1, CXR 0).
    assert [mkcnet_quality(0, name) for name in ("eyeq", "deepdrid", "drac", "cxr_iqad", "ct_iqad")] == [2, 1, 1, 0, 1]
    assert [mkcnet_quality(q, "drac") for q in range(3)] == [1, 0, 0]
    with pytest.raises(ValueError, match="dataset must be one of"):
        quality_scheme("aptos")
    with pytest.raises(ValueError, match="quality must lie in 0..1"):
        mkcnet_quality(2, "ct_iqad")


def test_mkcnet_mappings_and_low_quality():
    assert [mkcnet_diagnosis(g) for g in range(5)] == [0, 1, 1, 1, 2]
    with pytest.raises(ValueError, match="grade"):
        mkcnet_diagnosis(5)
    assert mkcnet_labels(_record("eyeq", diagnosis=3, quality=0)) == (1, 2)
    assert mkcnet_labels(_record("deepdrid", diagnosis=4, quality=1)) == (2, 0)
    assert mkcnet_labels(_record("drac", diagnosis=2, quality=1)) == (2, 0)  # no 5 -> 3 mapping for DRAC
    assert mkcnet_labels(_record("cxr_iqad", diagnosis=1, quality=2)) == (1, 2)
    assert mkcnet_labels(_record("ct_iqad", diagnosis=1, quality=0)) == (1, 1)
    assert [is_low_quality(q) for q in range(3)] == [False, True, True]
    assert is_low_quality(_record("drac", quality=1))
    with pytest.raises(ValueError, match="quality must be >= 0"):
        is_low_quality(-1)


def test_record_validates_labels():
    with pytest.raises(ValueError, match=r"quality must lie in 0..1 for deepdrid"):
        _record("deepdrid", quality=2)
    with pytest.raises(ValueError, match=r"diagnosis must lie in 0..1 for ct_iqad"):
        _record("ct_iqad", diagnosis=2)
    with pytest.raises(ValueError, match="low_dose_factor"):
        _record("cxr_iqad", low_dose_factor=0.5)
    with pytest.raises(ValueError, match="dataset must be one of"):
        _record("nope")
    record = _record("cxr_iqad", diagnosis=1, quality=1, extra={"split": "train"})
    assert (record.quality_name, record.diagnosis_name) == ("LQ child", "Pneumonia")
    assert hash(record) == hash(_record("cxr_iqad", diagnosis=1, quality=1))


# ---------------------------------------------------------------- DeepDRiD
DEEPDRID_HEADER = (
    "patient_id,image_id,image_path,Overall quality,left_eye_DR_Level,right_eye_DR_Level,"
    "patient_DR_Level,Clarity,Field definition,Artifact"
)


def _deepdrid(tmp_path: Path, rows: str) -> Path:
    folder = tmp_path / "regular_fundus_images" / "regular-fundus-training"
    folder.mkdir(parents=True)
    (folder / "regular-fundus-training.csv").write_text(DEEPDRID_HEADER + "\n" + rows)
    for image_id in ("2_l1", "2_r1"):
        _img(folder / "Images" / "2" / f"{image_id}.jpg")
    return tmp_path


def test_deepdrid_reads_eye_level_quality_and_scores(tmp_path):
    root = _deepdrid(
        tmp_path,
        "2,2_l1,\\regular-fundus-training\\2\\2_l1.jpg,0,2,,2,4,8,6\n"
        "2,2_r1,\\regular-fundus-training\\2\\2_r1.jpg,1,,1,2,10,10,0\n",
    )
    records = read_deepdrid(root, "training")
    assert [(r.image.name, r.diagnosis, r.quality, r.quality_name, r.patient_id) for r in records] == [
        ("2_l1.jpg", 2, 1, "not good", "2"),
        ("2_r1.jpg", 1, 0, "good", "2"),
    ]
    assert records[0].extra == {
        "eye": "left",
        "Clarity": 4,
        "Field definition": 8,
        "Artifact": 6,
        "patient_DR_Level": 2,
    }
    assert records[1].image == root / "regular_fundus_images" / "regular-fundus-training" / "Images" / "2" / "2_r1.jpg"
    # the root may also be regular_fundus_images itself
    assert len(read_deepdrid(root / "regular_fundus_images")) == 2


def test_deepdrid_errors_name_file_line_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="regular-fundus-validation"):
        read_deepdrid(tmp_path, "val")
    with pytest.raises(ValueError, match="split must be one of"):
        read_deepdrid(tmp_path, "dev")
    root = _deepdrid(tmp_path, "2,2_l1,\\x\\2\\2_l1.jpg,0,,3,2,4,8,6\n")
    with pytest.raises(ValueError, match=r"regular-fundus-training.csv:2: 'left_eye_DR_Level'"):
        read_deepdrid(root)
    csv = root / "regular_fundus_images" / "regular-fundus-training" / "regular-fundus-training.csv"
    csv.write_text(DEEPDRID_HEADER + "\n2,2_l1,\\x\\2\\2_l1.jpg,2,1,,1,4,8,6\n")
    with pytest.raises(ValueError, match=r"csv:2: 'Overall quality' must be one of \[0, 1\], got 2"):
        read_deepdrid(root)
    csv.write_text(DEEPDRID_HEADER.replace(",Artifact", "") + "\n")
    with pytest.raises(ValueError, match="Artifact"):
        read_deepdrid(root)
    csv.write_text(DEEPDRID_HEADER + "\n9,9_l1,\\x\\9\\9_l1.jpg,1,1,,1,4,8,6\n")
    with pytest.raises(FileNotFoundError, match="9_l1.jpg"):
        read_deepdrid(root)
    assert read_deepdrid(root, check_files=False)[0].image.name == "9_l1.jpg"


def _xlsx(path: Path, rows: list[list[object]]):
    """A minimal .xlsx (shared strings for text, numbers as floats, like Excel writes them)."""
    strings: list[str] = []
    xml_rows = []
    for r, row in enumerate(rows, start=1):
        cells = []
        for c, value in enumerate(row):
            ref = f"{chr(65 + c)}{r}"
            if isinstance(value, str):
                strings.append(value)
                cells.append(f'<c r="{ref}" t="s"><v>{len(strings) - 1}</v></c>')
            else:
                cells.append(f'<c r="{ref}"><v>{float(value)}</v></c>')
        xml_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "xl/worksheets/sheet1.xml", f"<worksheet {ns}><sheetData>{''.join(xml_rows)}</sheetData></worksheet>"
        )
        items = "".join(f"<si><t>{escape(s)}</t></si>" for s in strings)
        archive.writestr("xl/sharedStrings.xml", f"<sst {ns}>{items}</sst>")


def test_deepdrid_evaluation_needs_released_labels(tmp_path):
    folder = tmp_path / "regular_fundus_images" / "Online-Challenge1&2-Evaluation"
    folder.mkdir(parents=True)
    (folder / "Challenge1_upload.csv").write_text("image_id,DR_Level\n5_l1,\n")
    with pytest.raises(FileNotFoundError, match="released after the challenge.*Challenge1_labels.xlsx"):
        read_deepdrid(tmp_path, "test")
    _img(folder / "Images" / "5" / "5_l1.jpg")
    _img(folder / "Images" / "5" / "5_r2.jpg")
    _xlsx(folder / "Challenge1_labels.xlsx", [["image_id", "DR_Levels"], ["5_l1", 3], ["5_r2", 0]])
    _xlsx(
        folder / "Challenge2_labels.xlsx",
        [
            ["image_id", "Overall quality", "Artifact", "Clarity", "Field definition"],
            ["5_r2", 1, 0, 10, 8],
            ["5_l1", 0, 6, 4, 4],
        ],
    )
    records = read_deepdrid(tmp_path, "evaluation")
    assert [(r.image.name, r.diagnosis, r.quality, r.extra["eye"], r.extra["Clarity"]) for r in records] == [
        ("5_l1.jpg", 3, 1, "left", 4),
        ("5_r2.jpg", 0, 0, "right", 10),
    ]
    (folder / "Challenge2_labels.xlsx").unlink()
    (folder / "Challenge2_labels.csv").write_text("image_id,Overall quality\n5_l1,1\n")
    with pytest.raises(
        ValueError, match=r"Challenge1_labels.xlsx:3: image_id '5_r2' has no row in .*Challenge2_labels.csv"
    ):
        read_deepdrid(tmp_path, "test")


# ---------------------------------------------------------------- DRAC 2022
def _drac(tmp_path: Path, sep: str = " ") -> Path:
    grading = tmp_path / "C. Diabetic Retinopathy Grading"
    quality = tmp_path / "B. Image Quality Assessment"
    (grading / "2. Groundtruths").mkdir(parents=True)
    (quality / "2. Groundtruths").mkdir(parents=True)
    (grading / "2. Groundtruths" / f"a. DRAC2022_{sep}Diabetic Retinopathy Grading_Training Labels.csv").write_text(
        "image name,DR grade\n001.png,0\n002.png,2\n005.png,1\n"
    )
    (quality / "2. Groundtruths" / f"a. DRAC2022_{sep}Image Quality Assessment_Training Labels.csv").write_text(
        "image name,image quality level\n002.png,0\n001.png,2\n003.png,1\n"
    )
    for name in ("001.png", "002.png", "005.png"):
        _img(grading / "1. Original Images" / "a. Training Set" / name)
    return tmp_path


def test_drac_joins_by_name_and_orders_quality_best_first(tmp_path):
    records = read_drac(_drac(tmp_path))
    assert [(r.image.name, r.diagnosis, r.quality, r.quality_name, r.extra["quality level"]) for r in records] == [
        ("001.png", 0, 0, "excellent", 2),
        ("002.png", 2, 2, "poor", 0),
    ]
    assert all(r.patient_id is None and r.source == "drac2022" for r in records)
    with pytest.raises(ValueError, match=r"1 image\(s\) have a DR grade but no quality.*\['005.png'\].*\['003.png'\]"):
        read_drac(tmp_path, on_unmatched="error")
    with pytest.raises(ValueError, match="test labels are not public"):
        read_drac(tmp_path, "test")


def test_drac_accepts_names_without_the_space_and_reports_errors(tmp_path):
    assert len(read_drac(_drac(tmp_path, sep=""))) == 2
    csv = next((tmp_path / "C. Diabetic Retinopathy Grading" / "2. Groundtruths").iterdir())
    csv.write_text("image name,DR grade\n001.png,3\n")
    with pytest.raises(ValueError, match=r"Training Labels.csv:2: 'DR grade' must be 0, 1 or 2, got '3'"):
        read_drac(tmp_path)
    csv.write_text("image name,grade\n001.png,1\n")
    with pytest.raises(ValueError, match="DR grade"):
        read_drac(tmp_path)
    csv.write_text("image name,DR grade\n001.png,1\n001.png,1\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_drac(tmp_path)
    csv.write_text("image name,DR grade\n003.png,1\n")
    with pytest.raises(FileNotFoundError, match="003.png"):
        read_drac(tmp_path)
    csv.unlink()
    with pytest.raises(FileNotFoundError, match="DRAC2022_ Diabetic Retinopathy Grading_Training Labels.csv"):
        read_drac(tmp_path)


# ---------------------------------------------------------------- EyeQ
def test_eyeq_quality_records(tmp_path):
    (tmp_path / "Label_EyeQ_train.csv").write_text(",image,quality,DR_grade\n0,7_left.jpeg,2,4\n1,7_right.jpeg,0,1\n")
    records = read_eyeq_quality(tmp_path, check_files=False)
    assert [(r.quality_name, r.diagnosis, r.patient_id, r.extra.get("eye")) for r in records] == [
        ("Reject", 4, "7", "left"),
        ("Good", 1, "7", "right"),
    ]
    assert [mkcnet_labels(r) for r in records] == [(2, 0), (1, 2)]
    fundus = FundusRecord(Path("x.png"), dr_grade=0, quality=1, patient_id="x", eye=None)
    assert eyeq_to_quality_records([fundus])[0].extra == {}


# ---------------------------------------------------------------- Kermany and CXR-IQAD
KERMANY_FILES = {
    ("train", "NORMAL"): [
        "IM-0001-0001.jpeg",
        "NORMAL2-IM-0002-0001.jpeg",
        "IM-0003-0001-0002.jpeg",
        "IM-0004-0001.jpeg",
    ],
    ("train", "PNEUMONIA"): [
        "person1_bacteria_1.jpeg",
        "person1_virus_6.jpeg",
        "person2_bacteria_3.jpeg",
        "person3_virus_9.jpeg",
    ],
    ("test", "NORMAL"): ["IM-0005-0001.jpeg", "IM-0006-0001.jpeg"],
    ("test", "PNEUMONIA"): ["person4_bacteria_10.jpeg", "person5_bacteria_11.jpeg"],
}


def _kermany(root: Path) -> Path:
    data = root / "chest_xray"
    for (split, cls), names in KERMANY_FILES.items():
        for name in names:
            _img(data / split / cls / name, size=(16, 16))
    _img(data / "chest_xray" / "train" / "NORMAL" / "IM-9999-0001.jpeg")  # nested duplicate: ignored
    _img(data / "__MACOSX" / "train" / "NORMAL" / "._IM-0001-0001.jpeg")
    (data / "train" / "NORMAL" / "._IM-0001-0001.jpeg").write_bytes(b"")  # AppleDouble file
    (data / "train" / "NORMAL" / ".DS_Store").write_bytes(b"")
    return root


def test_kermany_reads_tree_patients_and_subtypes(tmp_path):
    records = read_kermany_pneumonia(_kermany(tmp_path))
    assert len(records) == 12
    assert [(r.split, r.label) for r in records[:5]] == [("train", 0)] * 4 + [("train", 1)]
    assert [r.patient_id for r in records[:8]] == [
        "IM-0001", "IM-0003", "IM-0004", "IM-0002", "person1", "person1", "person2", "person3",
    ]  # fmt: skip
    assert [r.subtype for r in records[4:6]] == ["bacteria", "virus"]
    assert records[0].subtype is None
    assert len(read_kermany_pneumonia(tmp_path / "chest_xray", "test")) == 4


def test_kermany_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no split folder"):
        read_kermany_pneumonia(tmp_path)
    root = _kermany(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"val does not exist"):
        read_kermany_pneumonia(root, "val")
    with pytest.raises(ValueError, match="split must be None or one of"):
        read_kermany_pneumonia(root, "dev")
    for path in (root / "chest_xray" / "test" / "NORMAL").iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match=r"no \['.jpeg'.*test/NORMAL"):
        read_kermany_pneumonia(root, "test")
    (root / "chest_xray" / "test" / "NORMAL").rmdir()
    with pytest.raises(FileNotFoundError, match=r"class folder .*test/NORMAL does not exist"):
        read_kermany_pneumonia(root)


NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
NIH_ROWS = [
    ("00000001_000.png", "No Finding", 1, 60),
    ("00000002_000.png", "Pneumonia", 2, 45),
    ("00000003_000.png", "Cardiomegaly", 3, 50),
    ("00000004_000.png", "Infiltration|Pneumonia", 4, 33),
    ("00000005_000.png", "No Finding", 5, 12),
    ("00000006_000.png", "No Finding", 6, 70),
    ("00000007_000.png", "No Finding", 7, 71),
]


def _nih(root: Path) -> Path:
    lines = [NIH_HEADER] + [f"{n},{f},0,{p},{a},M,PA,2048,2048,0.14,0.14" for n, f, p, a in NIH_ROWS]
    root.mkdir(parents=True)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    for name, *_ in NIH_ROWS:
        _img(root / "images" / name, size=(16, 16))
    return root


def test_cxr_iqad_construction(tmp_path):
    kermany, nih = _kermany(tmp_path / "kermany"), _nih(tmp_path / "nih")
    records = build_cxr_iqad(kermany, nih, adult_normals=2)
    children = [r for r in records if r.source == "kermany"]
    adults = [r for r in records if r.source == "nih_cxr14"]
    assert len(children) == 12
    # half of each diagnosis becomes LQ child, flagged for simulated low dose
    counts = Counter((r.diagnosis, r.quality_name) for r in children)
    assert counts == {(0, "HQ child"): 3, (0, "LQ child"): 3, (1, "HQ child"): 3, (1, "LQ child"): 3}
    assert all((r.low_dose_factor == 4.0) == (r.quality == 1) for r in children)
    assert children[4].extra == {"split": "train", "subtype": "bacteria"}
    # adults: Pneumonia (any), first 2 adult No Finding; Cardiomegaly and the 12-year-old dropped
    assert [(r.image.name, r.diagnosis, r.quality_name, r.patient_id) for r in adults] == [
        ("00000001_000.png", 0, "LQ adult", "1"),
        ("00000002_000.png", 1, "LQ adult", "2"),
        ("00000004_000.png", 1, "LQ adult", "4"),
        ("00000006_000.png", 0, "LQ adult", "6"),
    ]
    assert adults[2].extra == {"findings": "Infiltration|Pneumonia", "view": "PA", "age": 33}
    assert all(r.low_dose_factor == 4.0 for r in adults)
    # seeded: same seed, same choice; another seed, another choice
    assert build_cxr_iqad(kermany, nih, adult_normals=2) == records
    other = build_cxr_iqad(kermany, nih, adult_normals=2, seed=1)
    assert [r.quality for r in other[:12]] != [r.quality for r in children]


def test_cxr_iqad_options(tmp_path):
    kermany, nih = _kermany(tmp_path / "kermany"), _nih(tmp_path / "nih")
    records = build_cxr_iqad(
        kermany, nih, nih_pneumonia="only", min_adult_age=None, adult_normals=None, degrade_adults=False,
        lq_child_fraction=0.0, low_dose_factor=2.0,
    )  # fmt: skip
    adults = [r for r in records if r.source == "nih_cxr14"]
    assert [r.image.name for r in adults] == [
        "00000001_000.png", "00000002_000.png", "00000005_000.png", "00000006_000.png", "00000007_000.png",
    ]  # fmt: skip
    assert all(r.low_dose_factor is None for r in records)
    random_normals = build_cxr_iqad(kermany, nih, adult_normals=1, adult_normal_selection="random")
    assert sum(r.source == "nih_cxr14" and r.diagnosis == 0 for r in random_normals) == 1
    for kwargs, match in [
        ({"lq_child_fraction": 1.5}, "lq_child_fraction"),
        ({"low_dose_factor": 0.5}, "low_dose_factor"),
        ({"adult_normals": -1}, "adult_normals"),
        ({"nih_pneumonia": "all"}, "nih_pneumonia"),
        ({"adult_normal_selection": "last"}, "adult_normal_selection"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_cxr_iqad(kermany, nih, **kwargs)
    with pytest.raises(FileNotFoundError, match="Data_Entry_2017"):
        build_cxr_iqad(kermany, tmp_path)


# ---------------------------------------------------------------- simulated low dose
def test_simulate_low_dose_is_deterministic_and_blurs():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 48), dtype=np.uint8))
    out = simulate_low_dose(image, 4.0)
    assert out.size == image.size and out.mode == "L"
    assert np.array_equal(np.asarray(out), np.asarray(simulate_low_dose(image, 4.0)))

    def detail(im):
        return np.abs(np.diff(np.asarray(im, np.float64), axis=1)).mean()

    assert detail(out) < 0.5 * detail(image)
    assert np.array_equal(np.asarray(simulate_low_dose(image, 1.0)), np.asarray(image))
    assert simulate_low_dose(image.convert("RGB"), 3.0).mode == "RGB"
    assert simulate_low_dose(image, 1000.0).size == image.size  # shrinks to 1x1 and back
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="factor must be a finite number >= 1"):
            simulate_low_dose(image, bad)


def test_low_dose_is_applied_on_load_and_written_only_on_request(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(path)
    clean = QualityLabelledRecord(path, 0, 0, "p", "kermany", "cxr_iqad")
    low = QualityLabelledRecord(path, 0, 1, "p", "kermany", "cxr_iqad", low_dose_factor=4.0)
    assert np.array_equal(np.asarray(load_quality_image(clean)), np.asarray(Image.open(path)))
    expected = np.asarray(simulate_low_dose(Image.open(path).convert("L"), 4.0))
    assert np.array_equal(np.asarray(load_quality_image(low, mode="L")), expected)
    # size: resize first, then degrade (resolution-independent degradation)
    resized = Image.open(path).convert("L").resize((16, 16), Image.Resampling.BICUBIC)
    sized = load_quality_image(low, mode="L", size=(16, 16))
    assert sized.size == (16, 16)
    assert np.array_equal(np.asarray(sized), np.asarray(simulate_low_dose(resized, 4.0)))
    assert write_low_dose_images([low], tmp_path / "small", size=(16, 16))[0].image.stat().st_size > 0
    out = write_low_dose_images([clean, low], tmp_path / "out")
    assert out[0] is clean
    assert out[1].image == tmp_path / "out" / "kermany" / "a.png"
    assert out[1].low_dose_factor is None and out[1].extra["low_dose_factor"] == 4.0
    assert np.array_equal(np.asarray(Image.open(out[1].image)), expected)
    with pytest.raises(ValueError, match="would both be written"):
        write_low_dose_images([low, low], tmp_path / "out2")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_quality_image(QualityLabelledRecord(tmp_path / "missing.png", 0, 0, None, "kermany", "cxr_iqad"))


# ---------------------------------------------------------------- CT-IQAD
def _ct(tmp_path: Path) -> tuple[Path, Path]:
    hq, lq = tmp_path / "sarscov2", tmp_path / "COVID-CT"
    for i in range(3):
        _img(hq / "COVID" / f"Covid ({i + 1}).png")
        _img(hq / "non-COVID" / f"Non-Covid ({i + 1}).png")
    _img(lq / "Images-processed" / "CT_COVID" / "2020.03.22.20040782-p25-1542.png")
    _img(lq / "Images-processed" / "CT_NonCOVID" / "18%0.jpg")
    (lq / "Images-processed" / "CT_NonCOVID" / "notes.txt").write_text("not an image")
    return hq, lq


def test_ct_iqad_defaults_follow_mkcnet_split_files(tmp_path):
    hq, lq = _ct(tmp_path)
    records = build_ct_iqad(hq, lq)
    assert [(r.image.name, r.diagnosis_name, r.quality_name, r.source) for r in records] == [
        ("Covid (1).png", "COVID", "HQ", "sars_cov2_ct"),
        ("Covid (2).png", "COVID", "HQ", "sars_cov2_ct"),
        ("Covid (3).png", "COVID", "HQ", "sars_cov2_ct"),
        ("Non-Covid (1).png", "non-COVID", "HQ", "sars_cov2_ct"),
        ("Non-Covid (2).png", "non-COVID", "HQ", "sars_cov2_ct"),
        ("Non-Covid (3).png", "non-COVID", "HQ", "sars_cov2_ct"),
        ("2020.03.22.20040782-p25-1542.png", "COVID", "LQ", "covid_ct"),
        ("18%0.jpg", "non-COVID", "LQ", "covid_ct"),
    ]
    # MKCNet split files: "Covid (1109).png,1,1", "Non-Covid (529).png,0,1", COVID-CT rows "...,1,0" / "...,0,0"
    assert [mkcnet_labels(r) for r in records[2:4]] == [(1, 1), (0, 1)]
    assert [mkcnet_labels(r) for r in records[6:]] == [(1, 0), (0, 0)]
    assert all(r.patient_id is None for r in records)
    subset = build_ct_iqad(hq, lq, hq_per_class=2, seed=3)
    assert Counter((r.source, r.diagnosis) for r in subset) == {
        ("sars_cov2_ct", 1): 2, ("sars_cov2_ct", 0): 2, ("covid_ct", 1): 1, ("covid_ct", 0): 1,
    }  # fmt: skip
    assert subset == build_ct_iqad(hq, lq, hq_per_class=2, seed=3)


def test_ct_iqad_custom_mapping_and_layout_errors(tmp_path):
    hq, lq = _ct(tmp_path)
    flipped = build_ct_iqad(hq, lq, hq_classes={"COVID": 0}, lq_classes={"CT_NonCOVID": 1})
    assert [(r.extra["folder"], r.diagnosis) for r in flipped] == [("COVID", 0)] * 3 + [("CT_NonCOVID", 1)]
    (hq / "non-COVID").rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=r"HQ source .*'non-COVID' not found .*found subfolders \['COVID'\]"):
        build_ct_iqad(hq, lq)
    with pytest.raises(FileNotFoundError, match="LQ source .*does not exist"):
        build_ct_iqad(hq, tmp_path / "nowhere", hq_classes={"COVID": 1})
    (lq / "Images-processed" / "CT_COVID" / "2020.03.22.20040782-p25-1542.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"CT_COVID holds no \['.jpeg', '.jpg', '.png'\] image"):
        build_ct_iqad(hq, lq, hq_classes={"COVID": 1})
    with pytest.raises(ValueError, match=r"diagnoses must be 0 \(non-COVID\) or 1 \(COVID\), got \{'COVID': 2\}"):
        build_ct_iqad(hq, lq, hq_classes={"COVID": 2})
    with pytest.raises(ValueError, match="mapping is empty"):
        build_ct_iqad(hq, lq, hq_classes={})
    with pytest.raises(ValueError, match="hq_per_class"):
        build_ct_iqad(hq, lq, hq_per_class=-1)
