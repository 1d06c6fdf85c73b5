"""CoMCL on NIH ChestX-ray14 (a fixture tree): classes, simulated quality, boxes, test-time low dose, a smoke run."""

import dataclasses
import math

import pytest
import torch
from _nih_fixture import LABELS, write_nih_tree

from qualcl.data.levels import split_levels
from qualcl.recipes.comcl import comcl_config, run_comcl
from qualcl.recipes.comcl.data import (
    CXR_CLASSES,
    GradingDataset,
    PatchPairDataset,
    degrade_to_ratio,
    load_nih_layout,
    low_dose_tensor,
)


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    return write_nih_tree(tmp_path_factory.mktemp("nih"))


def test_classes_exclude_multi_and_other_findings(nih):
    data = load_nih_layout(nih, "train", 64, lq_ratio=0.0)
    names = [CXR_CLASSES[g] for g in data.label.tolist()]
    assert "Mass|Effusion" not in names and "Hernia" not in names
    expected = [label for i, label in enumerate(LABELS * 2) if i < 28 and label in CXR_CLASSES]
    assert names == expected
    assert data.modality == "cxr" and data.images.shape == (len(expected), 3, 64, 64)
    assert torch.equal(data.images[:, 0], data.images[:, 2])  # grey replicated


def test_simulated_quality_marks_and_degrades_a_seeded_fraction(nih):
    clean = load_nih_layout(nih, "train", 64, lq_ratio=0.0)
    data = load_nih_layout(nih, "train", 64, lq_ratio=0.432, seed=3)
    low = data.quality == 1
    assert int(low.sum()) == round(0.432 * len(data))
    assert torch.equal(data.images[~low], clean.images[~low])
    assert torch.equal(data.images[low], low_dose_tensor(clean.images[low]))
    assert not torch.equal(data.images[low], clean.images[low])
    again = load_nih_layout(nih, "train", 64, lq_ratio=0.432, seed=3)
    assert torch.equal(again.quality, data.quality)
    levels = split_levels(data.label, data.quality, "eyeq")
    assert set(levels.tolist()) == {0, 1, 2, 3}  # all four CoMCL levels exist


def test_boxes_are_rescaled_and_fov_is_the_central_field(nih):
    data = load_nih_layout(nih, "train", 64, lq_ratio=0.0)
    with_box = [i for i, b in enumerate(data.boxes) if len(b)]
    assert with_box and all(int(data.label[i]) > 0 for i in with_box)
    for i in with_box:
        x1, y1, x2, y2 = data.boxes[i][0].tolist()
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64 and x2 - x1 <= 9 and y2 - y1 <= 9
    assert data.fov[0, 32, 32] and not data.fov[0, 2, 2] and not data.fov[0, 60, 32]


def test_max_images_and_quality_sidecar(nih, tmp_path):
    subset = load_nih_layout(nih, "train", 32, max_images=5, seed=1)
    assert len(subset) == 5
    root = write_nih_tree(tmp_path / "nih")
    names = [line for line in (root / "train_val_list.txt").read_text().split() if line]
    rows = "\n".join(f"{n},{'low' if i % 2 else 0}" for i, n in enumerate(names))
    (root / "quality.csv").write_text("Image Index,Quality\n" + rows + "\n")
    data = load_nih_layout(root, "train", 32)
    clean = load_nih_layout(nih, "train", 32, lq_ratio=0.0)
    assert torch.equal(data.images, clean.images)  # given quality labels: nothing is degraded
    assert data.quality.sum() > 0
    (root / "quality.csv").write_text("Image Index,Quality\n" + names[0] + ",bad\n")
    with pytest.raises(ValueError, match="Quality must be"):
        load_nih_layout(root, "train", 32)
    (root / "quality.csv").write_text("Image Index,Quality\n" + names[0] + ",1\n")
    with pytest.raises(ValueError, match="no Quality for"):
        load_nih_layout(root, "train", 32)
    with pytest.raises(ValueError, match="split"):
        load_nih_layout(root, "val", 32)


def test_degrade_to_ratio_uses_low_dose_for_x_rays(nih):
    data = load_nih_layout(nih, "test", 64, lq_ratio=0.0)
    out = degrade_to_ratio(data, 0.7, seed=0)
    changed = out.quality == 1
    assert int(changed.sum()) == math.ceil(0.7 * len(data))
    assert torch.equal(out.images[changed], low_dose_tensor(data.images[changed]))
    assert out.modality == "cxr" and set(out.quality.tolist()) <= {0, 1}
    assert bool((degrade_to_ratio(data, 1.0, seed=0).quality == 1).all())


def test_x_ray_datasets_normalise_and_do_not_flip_upside_down(nih):
    data = load_nih_layout(nih, "train", 64, lq_ratio=0.0)
    grading = GradingDataset(data, train=True)
    plain = GradingDataset(data, train=False)[0][0]
    seen = set()
    for epoch in range(12):
        grading.set_epoch(epoch)
        image, grade, quality = grading[0]
        assert image.shape == (3, 64, 64) and grade == 0 and quality == 0
        if torch.equal(image, plain):
            seen.add("as is")
        else:
            assert torch.equal(image, plain.flip(-1)), "an X-ray may only be mirrored left-right"
            seen.add("mirrored")
    assert seen == {"as is", "mirrored"}
    first, second, level, params1, params2 = PatchPairDataset(data, 16, seed=0, augmentation="light")[1]
    assert first.shape == second.shape == (3, 16, 16) and first.dtype == torch.uint8
    assert level == 0 and params1.shape == params2.shape == (9,)  # Atelectasis, high quality: L


def test_smoke_run_on_nih_reports_kappa_per_quality(nih, tmp_path):
    config = comcl_config("smoke", dataset="nih-cxr14", data_dir=str(nih))
    assert config.num_classes == len(CXR_CLASSES) and config.data.lq_ratio == 0.432
    metrics = run_comcl(config, tmp_path / "run")
    for setting in metrics["test"].values():
        assert set(setting) == {"overall", "HQ", "LQ"}
        assert -1.0 <= setting["overall"]["kappa"] <= 1.0 or setting["overall"]["kappa"] != setting["overall"]["kappa"]
    assert metrics["test"]["lq_100"]["HQ"]["n"] == 0
    assert "Kappa" in (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert (tmp_path / "run" / "plots" / "confusion_matrix.png").is_file()


def test_nih_configuration_errors(nih, tmp_path):
    config = comcl_config("smoke", dataset="nih-cxr14")
    with pytest.raises(ValueError, match="--data DIR"):
        run_comcl(config, tmp_path / "a")
    config = comcl_config("smoke", dataset="nih-cxr14", data_dir=str(nih))
    with pytest.raises(ValueError, match="9 classes"):
        run_comcl(dataclasses.replace(config, num_classes=5), tmp_path / "b")
    with pytest.raises(ValueError, match="BBox_List_2017"):
        run_comcl(dataclasses.replace(config, data=dataclasses.replace(config.data, boxes="d.pt")), tmp_path / "c")


def test_ablation_for_x_rays_uses_kappa_and_table_1():
    from qualcl.recipes.comcl import COMCL

    config = comcl_config("smoke", dataset="nih-cxr14", data_dir="NIH")
    assert list(COMCL.ablation_columns(config).values())[:2] == ["Kappa original", "ACC original"]
    notes = COMCL.ablation_notes(config)
    assert "0.682 / 0.708" in notes and "Chest X-ray" in notes
