"""Kaggle EyePACS reader on fixture trees, and the public FundusDR split (equal to scikit-learn's)."""

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import train_test_split

from qualcl.data.readers import EyePACSRecord, fundusdr_split, read_eyepacs, shuffle_split


def _tree(root, rows, *, folder="train", header="image,level", name="trainLabels.csv"):
    (root / folder).mkdir(parents=True, exist_ok=True)
    lines = [header]
    for image, level in rows:
        lines.append(f"{image},{level}")
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(root / folder / f"{image}.jpeg")
    (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_reads_grades_patients_and_eyes(tmp_path):
    root = _tree(tmp_path, [("10_left", 0), ("10_right", 2), ("13_left", 4)])
    records = read_eyepacs(root)
    assert [r.dr_grade for r in records] == [0, 2, 4]
    assert [(r.patient_id, r.eye) for r in records] == [("10", "left"), ("10", "right"), ("13", "left")]
    assert records[0].image == root / "train" / "10_left.jpeg"


def test_reads_the_cropped_kaggle_version_with_index_columns(tmp_path):
    (tmp_path / "resized_train_cropped").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "resized_train_cropped" / "7_right.jpeg")
    (tmp_path / "trainLabels_cropped.csv").write_text(",Unnamed: 0,image,level\n0,0,7_right,3\n")
    (record,) = read_eyepacs(tmp_path)
    assert record.dr_grade == 3 and record.eye == "right"


def test_layout_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="EyePACS labels"):
        read_eyepacs(tmp_path)
    _tree(tmp_path, [("1_left", 0)], header="image,grade")
    with pytest.raises(ValueError, match="level"):
        read_eyepacs(tmp_path)
    _tree(tmp_path, [("1_left", 7)])
    with pytest.raises(ValueError, match=r"trainLabels.csv:2: level must lie in 0..4"):
        read_eyepacs(tmp_path)
    (tmp_path / "trainLabels.csv").write_text("image,level\n2_left,1\n")
    with pytest.raises(FileNotFoundError, match="2_left"):
        read_eyepacs(tmp_path)
    assert read_eyepacs(tmp_path, check_files=False)[0].image.name == "2_left.jpeg"


@pytest.mark.parametrize("n", [10, 37, 1001])
def test_shuffle_split_equals_scikit_learn(n):
    items = list(range(n))
    assert shuffle_split(items, 0.2, 11) == tuple(train_test_split(items, test_size=0.2, random_state=11))


def test_fundusdr_split_is_the_public_codes_and_by_patient_keeps_patients_together(tmp_path):
    records = [
        EyePACSRecord(tmp_path / f"{i // 2}_{('left', 'right')[i % 2]}.jpeg", i % 5, str(i // 2), None)
        for i in range(200)
    ]
    train, val, test = fundusdr_split(records)
    rest, want_test = train_test_split(records, test_size=0.2, random_state=11)
    want_train, want_val = train_test_split(rest, test_size=0.1, random_state=22)
    assert (train, val, test) == (want_train, want_val, want_test)
    assert (len(train), len(val), len(test)) == (144, 16, 40)
    leaked = {r.patient_id for r in train} & {r.patient_id for r in test}
    assert leaked  # the image-level split puts both eyes of some patients on both sides
    p_train, p_val, p_test = fundusdr_split(records, by_patient=True)
    sides = [{r.patient_id for r in part} for part in (p_train, p_val, p_test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert len(p_train) + len(p_val) + len(p_test) == 200
    with pytest.raises(ValueError, match="test_size"):
        shuffle_split(records, 1.5, 0)
