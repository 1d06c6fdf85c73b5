"""SynthFundus on disk: EyeQ-format CSVs, masks, ground truth, byte-identical reruns, reader, preview."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from qualcl.data.readers import read_eyeq
from qualcl.data.synthetic import (
    CSV_HEADER,
    GENERATOR_VERSION,
    LESION_TYPES,
    MASK_NAMES,
    SyntheticFundusDataset,
    grade_from_lesions,
    image_seed,
    load_fundus_dataset,
    save_preview_grid,
    split_patients,
    write_fundus_dataset,
)

SIZE = 64
N = 21  # odd: the last patient has a left eye only


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_a")
    summary = write_fundus_dataset(root, N, size=SIZE, seed=5, lq_ratio=0.5, progress=False)
    return root, summary


@pytest.fixture(scope="module")
def truth(written):
    return json.loads((written[0] / "ground_truth.json").read_text())


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_csv(path):
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


# ------------------------------------------------------------------ determinism


def test_same_arguments_give_byte_identical_files(written, tmp_path):
    root, _ = written
    write_fundus_dataset(tmp_path, N, size=SIZE, seed=5, lq_ratio=0.5, progress=False)
    first, second = _files(root), _files(tmp_path)
    assert first.keys() == second.keys()
    assert len(first) == N * (1 + len(MASK_NAMES)) + 3
    different = [name for name in first if first[name] != second[name]]
    assert different == []


def test_images_do_not_depend_on_the_dataset_size(written, tmp_path):
    root, _ = written
    write_fundus_dataset(tmp_path, 8, size=SIZE, seed=5, lq_ratio=0.5, progress=False)
    for image in sorted((tmp_path / "images").iterdir()):
        assert image.read_bytes() == (root / "images" / image.name).read_bytes()
    for mask in sorted((tmp_path / "masks").iterdir()):
        assert mask.read_bytes() == (root / "masks" / mask.name).read_bytes()


def test_another_seed_gives_other_images(written, tmp_path):
    write_fundus_dataset(tmp_path, 2, size=SIZE, seed=6, lq_ratio=0.5, progress=False)
    name = "images/00000_left.png"
    assert (tmp_path / name).read_bytes() != (written[0] / name).read_bytes()


# ------------------------------------------------------------------ EyeQ CSVs and patient split


def test_csvs_follow_the_eyeq_format(written, truth):
    root, summary = written
    by_name = {r["image"]: r for r in truth["images"]}
    seen = []
    for split in ("train", "test"):
        path = root / f"Label_EyeQ_{split}.csv"
        assert path.read_text().splitlines()[0] == CSV_HEADER == ",image,quality,DR_grade"
        rows = _read_csv(path)[1:]
        assert [int(r[0]) for r in rows] == list(range(len(rows)))
        for _, name, quality, grade in rows:
            assert (int(quality), int(grade)) == (by_name[name]["quality"], by_name[name]["dr_grade"])
            assert by_name[name]["split"] == split
            assert int(quality) in (0, 1, 2) and int(grade) in range(5)
        seen += [r[1] for r in rows]
    assert sorted(seen) == sorted(by_name) and len(seen) == N
    num_train = len(_read_csv(root / "Label_EyeQ_train.csv")) - 1
    assert (summary.num_train, summary.num_test) == (num_train, N - num_train)


def test_split_is_by_patient(written, truth):
    patients = {}
    for record in truth["images"]:
        patients.setdefault(record["patient_id"], set()).add(record["split"])
    assert all(len(splits) == 1 for splits in patients.values())  # both eyes in the same split
    test_patients = [p for p, s in patients.items() if s == {"test"}]
    assert len(test_patients) == round(0.2 * len(patients)) == 2
    expected = {f"{p:05d}" for p in split_patients(len(patients), 0.2, seed=5)}
    assert set(test_patients) == expected


def test_split_patients_edge_cases():
    assert split_patients(1, 0.5, seed=0) == frozenset()
    assert len(split_patients(2, 0.01, seed=0)) == 1
    assert len(split_patients(3, 0.99, seed=0)) == 2
    assert split_patients(10, 0.0, seed=0) == frozenset()
    assert split_patients(50, 0.3, seed=1) == split_patients(50, 0.3, seed=1) != split_patients(50, 0.3, seed=2)


def test_the_eyeq_reader_reads_the_synthetic_set(written, truth):
    root, _ = written
    records = read_eyeq(root, "train") + read_eyeq(root, "test")
    assert len(records) == N
    by_name = {r["image"]: r for r in truth["images"]}
    for record in records:
        entry = by_name[record.image.name]
        assert (record.dr_grade, record.quality) == (entry["dr_grade"], entry["quality"])
        assert (record.patient_id, record.eye) == (entry["patient_id"], entry["eye"])


# ------------------------------------------------------------------ ground truth and masks


def test_ground_truth_json_has_records_and_metadata(written, truth):
    meta = truth["metadata"]
    assert meta["generator_version"] == GENERATOR_VERSION
    assert (meta["seed"], meta["size"], meta["lq_ratio"], meta["num_images"]) == (5, SIZE, 0.5, N)
    assert len(truth["images"]) == N
    for i, record in enumerate(truth["images"]):
        assert record["index"] == i and record["seed"] == image_seed(i, seed=5)
        assert record["image"] == f"{i // 2:05d}_{'left' if i % 2 == 0 else 'right'}.png"
        assert record["dr_grade"] == grade_from_lesions(record["lesion_counts_by_quadrant"])
        assert set(record["landmarks"]) >= {"disc", "fovea"} and len(record["landmarks"]["disc"]) == 2
        assert record["caption"] and record["degradation"]["level"] == record["quality"]
        assert record["eye"] in record["caption"]
    assert truth["images"][-1]["eye"] == "left"  # odd N: the last patient has one eye


def test_masks_are_binary_and_match_counts_and_boxes(written, truth):
    root, _ = written
    for record in truth["images"]:
        stem = Path(record["image"]).stem
        masks = {}
        for name in MASK_NAMES:
            with Image.open(root / "masks" / f"{stem}_{name}.png") as image:
                assert image.mode == "L" and image.size == (SIZE, SIZE)
                array = np.asarray(image)
            assert set(np.unique(array)) <= {0, 255}
            masks[name] = array > 0
        for kind in LESION_TYPES:
            assert masks[kind].any() == (record["lesion_counts"][kind] > 0)
        assert masks["OD"].any() and masks["vessels"].any()
        for x1, y1, x2, y2, kind in record["boxes"]:
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
            assert masks[kind][y1:y2, x1:x2].any()


def test_images_are_rgb_pngs_black_outside_the_fov(written, truth):
    root, _ = written
    yy, xx = np.mgrid[:SIZE, :SIZE]
    c = (SIZE - 1) / 2
    outside = (xx - c) ** 2 + (yy - c) ** 2 > (0.46 * SIZE) ** 2
    for record in truth["images"]:
        with Image.open(root / record["image_path"]) as image:
            assert image.mode == "RGB" and image.size == (SIZE, SIZE)
            assert not np.asarray(image)[outside].any()


# ------------------------------------------------------------------ reader and torch dataset


def test_reader_and_dataset(written, truth):
    root, summary = written
    folder = load_fundus_dataset(root)
    assert len(folder.records) == N and len(folder.splits["train"]) == summary.num_train
    dataset = SyntheticFundusDataset(root, "test", masks=True)
    assert len(dataset) == summary.num_test
    image, labels = dataset[0]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert labels["masks"].shape == (len(MASK_NAMES), SIZE, SIZE) and labels["masks"].dtype == torch.bool
    record = dataset.records[0]
    assert labels["dr_grade"] == record["dr_grade"] and labels["quality"] == record["quality"]
    assert labels["eye"] == record["eye"] and labels["patient_id"] == record["patient_id"]
    boxes, kinds = dataset.boxes(0)
    assert boxes.shape == (len(record["boxes"]), 4) and kinds == [b[4] for b in record["boxes"]]
    batch_images, batch_labels = next(iter(DataLoader(SyntheticFundusDataset(root, "all"), batch_size=4)))
    assert batch_images.shape == (4, 3, SIZE, SIZE) and batch_labels["dr_grade"].shape == (4,)
    assert batch_labels["quality_factors"].shape == (4, 3)


def test_reader_names_what_is_missing(written, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(written[0], root)
    with pytest.raises(ValueError, match="split"):
        SyntheticFundusDataset(root, "val")
    (root / "images" / "00000_right.png").unlink()
    with pytest.raises(FileNotFoundError, match="00000_right.png"):
        load_fundus_dataset(root)
    shutil.copy(written[0] / "images" / "00000_right.png", root / "images" / "00000_right.png")
    lines = (root / "Label_EyeQ_test.csv").read_text().splitlines()
    (root / "Label_EyeQ_test.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    with pytest.raises(ValueError, match="DR_grade"):
        load_fundus_dataset(root)
    (root / "Label_EyeQ_test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="Label_EyeQ_test.csv"):
        load_fundus_dataset(root)
    (root / "ground_truth.json").unlink()
    with pytest.raises(FileNotFoundError, match="ground_truth.json"):
        load_fundus_dataset(root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_fundus_dataset(tmp_path / "nowhere")


# ------------------------------------------------------------------ preview, progress, bad arguments


def test_preview_grid(written, tmp_path):
    path = save_preview_grid(written[0], tmp_path / "sub" / "preview.png", tile=48)
    with Image.open(path) as image:
        assert image.size == (56 + 3 * 48 + 4 * 4, 20 + 5 * 48 + 6 * 4)
        array = np.asarray(image.convert("RGB"))
    assert array.mean() > 10  # fundus images were pasted
    with pytest.raises(FileNotFoundError, match="ground_truth.json"):
        save_preview_grid(tmp_path, tmp_path / "x.png")
    with pytest.raises(ValueError, match="tile"):
        save_preview_grid(written[0], tmp_path / "x.png", tile=4)


def test_progress_bar_is_shown(tmp_path, capsys):
    write_fundus_dataset(tmp_path, 2, size=48, progress=True)
    assert "SynthFundus" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_images": 0}, "num_images"),
        ({"num_images": -3}, "num_images"),
        ({"size": 20}, "size"),
        ({"lq_ratio": 1.01}, "lq_ratio"),
        ({"lq_ratio": -0.5}, "lq_ratio"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"seed": -2}, "seed"),
        ({"grade_prior": "flat"}, "grade_prior"),
        ({"extra_test": -1}, "extra_test"),
        ({"extra_test": 1.5}, "extra_test"),
    ],
)
def test_bad_arguments_are_rejected_before_writing(tmp_path, kwargs, name):
    args = {"num_images": 2, "size": 48, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=name):
        write_fundus_dataset(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_ensure_fundus_dataset_reuses_only_a_matching_folder(tmp_path):
    from qualcl.data.synthetic import ensure_fundus_dataset

    root = ensure_fundus_dataset(tmp_path / "d", 4, size=64, seed=1, progress=False)
    stamp = (root / "ground_truth.json").stat().st_mtime_ns
    assert ensure_fundus_dataset(root, 4, size=64, seed=1, progress=False) == root
    assert (root / "ground_truth.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="generated with"):
        ensure_fundus_dataset(root, 6, size=64, seed=1, progress=False)


def test_extra_test_images_enlarge_the_test_split_only(written, truth, tmp_path):
    """Further patients' images all go to the test split; the training split is the same images."""
    root, _ = written
    summary = write_fundus_dataset(tmp_path, N, size=SIZE, seed=5, lq_ratio=0.5, progress=False, extra_test=5)
    assert (summary.num_images, summary.num_patients) == (N + 5, 11 + 3)
    assert _read_csv(tmp_path / "Label_EyeQ_train.csv") == _read_csv(root / "Label_EyeQ_train.csv")
    before, after = _read_csv(root / "Label_EyeQ_test.csv"), _read_csv(tmp_path / "Label_EyeQ_test.csv")
    assert after[: len(before)] == before and len(after) == len(before) + 5
    extra = json.loads((tmp_path / "ground_truth.json").read_text())
    assert extra["metadata"]["extra_test"] == 5 and "extra_test" not in truth["metadata"]
    new = extra["images"][N:]
    assert [r["split"] for r in new] == ["test"] * 5
    assert [int(r["patient_id"]) for r in new] == [11, 11, 12, 12, 13]
    for record in truth["images"]:  # the first N images are byte-identical
        name = record["image_path"]
        assert (tmp_path / name).read_bytes() == (root / name).read_bytes()


def test_ensure_and_cache_tell_extra_test_sets_apart(tmp_path):
    from qualcl.data.synthetic import cached_fundus_dataset, ensure_fundus_dataset

    plain = cached_fundus_dataset(4, size=48, progress=False, cache=tmp_path)
    more = cached_fundus_dataset(4, size=48, progress=False, cache=tmp_path, extra_test=2)
    assert more.name == plain.name + "-xt2"
    assert len(json.loads((more / "ground_truth.json").read_text())["images"]) == 6
    with pytest.raises(ValueError, match="generated with"):
        ensure_fundus_dataset(plain, 4, size=48, progress=False, extra_test=2)
    with pytest.raises(ValueError, match="generated with"):
        ensure_fundus_dataset(more, 4, size=48, progress=False)
