import pytest
import torch
from torchvision.models import detection

from qualcl.data.loading import patient_split
from qualcl.recipes.ablation import ablation_table, variant_config
from qualcl.recipes.comcl import (
    ABLATIONS,
    COMCL,
    PRESETS,
    ComclConfig,
    FasterRCNNDetector,
    GroundTruthDetector,
    LesionDetector,
    comcl_config,
    train_detector,
)
from qualcl.recipes.config import config_from_dict, config_to_dict


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_round_trip(preset):
    config = comcl_config(preset)
    assert config_from_dict(ComclConfig, config_to_dict(config)) == config


def test_comcl_config_overrides_data_and_rejects_unknown_preset():
    config = comcl_config("smoke", dataset="eyeq", data_dir="/data/eyeq")
    assert (config.data.dataset, config.data.data_dir) == ("eyeq", "/data/eyeq")
    assert comcl_config("smoke").data.dataset == "synthetic"  # presets are not mutated
    with pytest.raises(ValueError, match="unknown preset"):
        comcl_config("huge")


def test_mode_fields_are_checked_when_the_config_is_built():
    with pytest.raises(ValueError, match=r"config.pretrain.method must be one of \['comcl', 'simclr', 'none'\]"):
        comcl_config("smoke", overrides=["pretrain.method=moco"])
    with pytest.raises(ValueError, match=r"pretrain.pairs\[0\] must have 2 items"):
        comcl_config("smoke", overrides=["pretrain.pairs=[[L, LQ_L, H]]"])
    # level names are checked before a run starts, against the one list (qualcl.data.levels.LEVEL_NAMES)
    with pytest.raises(ValueError, match="pretrain.pairs must name levels"):
        COMCL.check(comcl_config("smoke", overrides=["pretrain.pairs=[[L, Q]]"]))
    with pytest.raises(ValueError, match="either the four levels or lesion/healthy"):
        COMCL.check(comcl_config("smoke", overrides=["pretrain.pairs=[[L, healthy]]"]))
    with pytest.raises(ValueError, match="backbone must be one of the CNN encoders"):
        comcl_config("smoke", overrides=["backbone=vit_tiny"])
    with pytest.raises(ValueError, match=r"data.dataset must be one of"):
        comcl_config("smoke", dataset="imagenet")
    assert comcl_config("smoke", overrides=["trainer.precision=32"]).trainer.precision == "32"


def test_ablation_variants_are_valid_overrides_with_the_papers_labels():
    base = comcl_config("smoke")
    for name in ABLATIONS:
        config = variant_config(base, ABLATIONS, name, seed=2)
        COMCL.check(config)
        assert config.probe and config.seed == 2
    assert variant_config(base, ABLATIONS, "wo_multi_level", 0).pretrain.pairs == (("lesion", "healthy"),)
    assert variant_config(base, ABLATIONS, "baseline", 0).pretrain.method == "none"
    assert ABLATIONS["wo_spl"].label == "CoMCL w/o SPL (no hard-negative mining)"


def _metrics(kappa, accuracy, probe=None):
    """A run's metrics.json with the same cells on every test set and quality level."""
    cell = {"qwk": kappa, "kappa": kappa, "accuracy": accuracy, "n": 4}
    test = {
        s: {q: dict(cell) for q in ("overall", "Good", "Usable", "Reject")} for s in ("original", "lq_70", "lq_100")
    }
    return {"test": test, **({"probe": probe} if probe else {})}


def _tabulate(config, runs, seeds):
    """The generic runner's table of ``{variant: [metrics per seed]}``."""
    columns = COMCL.ablation_columns(config)
    results = {}
    for name, per_seed in runs.items():
        strata = {}
        for metrics in per_seed:
            for stratum, values in COMCL.ablation_cells(config, metrics).items():
                for key in columns:
                    strata.setdefault(stratum, {}).setdefault(key, []).append(values.get(key, float("nan")))
        results[name] = strata
    return ablation_table(COMCL, config, results, ABLATIONS, seeds)


def test_ablation_table_has_mean_std_per_test_set_and_the_papers_figures():
    runs = {
        "baseline": [_metrics(0.5, 0.4), _metrics(0.7, 0.6)],
        "comcl": [_metrics(0.8, float("nan")), _metrics(0.8, 0.7)],
    }
    table = _tabulate(comcl_config("smoke"), runs, [0, 1])
    assert "| variant | QWK original | ACC original | QWK lq_70 | ACC lq_70 | QWK lq_100 | ACC lq_100 |" in table
    assert "| Baseline (no pre-training) | 0.600 ± 0.141 | 0.500 ± 0.141 | 0.600 ± 0.141 |" in table
    assert "0.700 ± 0.000 (n=1)" in table  # NaN seeds are left out, and counted
    assert "Baseline (no pre-training) 0.804 / 0.783" in table and "EyeQ" in table  # the paper's figures
    assert "## QWK original per stratum" in table and "| Good | Usable | Reject |" in table


def test_ablation_table_adds_the_frozen_encoder_diagnostics():
    probe = {
        "grade": {"overall": {"qwk": 0.3, "accuracy": 0.4}},
        "low_quality": {"qwk": 0.9, "accuracy": 0.95},
        "geometry": {"effective_rank": 50.0, "within_level_cosine": 0.2, "between_level_cosine": -0.1},
    }
    table = _tabulate(comcl_config("smoke"), {"comcl": [_metrics(0.1, 0.2, probe)]}, [0])
    assert "| probe QWK | probe ACC | LQ-probe kappa | LQ-probe ACC | effective rank |" in table
    row = next(line for line in table.splitlines() if line.startswith("| CoMCL (full)"))
    assert row.split(" | ")[7:10] == ["0.300 ± 0.000", "0.400 ± 0.000", "0.900 ± 0.000"]
    assert "50.000 ± 0.000" in row


def test_patient_split_keeps_patients_together():
    patients = [f"p{i // 2}" for i in range(20)]
    keep, held = patient_split(patients, 0.3, seed=1)
    assert sorted(keep + held) == list(range(20))
    assert not {patients[i] for i in keep} & {patients[i] for i in held}
    assert len({patients[i] for i in held}) == 3


def test_ground_truth_detector_protocol():
    gt = GroundTruthDetector([torch.tensor([[1, 2, 5, 6]]), torch.zeros(0, 4)])
    assert isinstance(gt, LesionDetector)
    found = gt.detect(torch.zeros(2, 3, 8, 8), ids=[1, 0])
    assert found[0].boxes.shape == (0, 4)
    assert found[1].boxes.tolist() == [[1.0, 2.0, 5.0, 6.0]]
    with pytest.raises(ValueError, match="ids"):
        gt.detect(torch.zeros(1, 3, 8, 8))


def test_faster_rcnn_trains_saves_and_loads(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (3, 3, 64, 64), generator=g, dtype=torch.uint8)
    boxes = [torch.tensor([[10.0, 10.0, 20.0, 22.0]]), torch.zeros(0, 4), torch.tensor([[30.0, 5.0, 40.0, 15.0]])]
    labels = [torch.tensor([1]), torch.zeros(0, dtype=torch.long), torch.tensor([2])]
    detector, losses = train_detector(images, boxes, labels, steps=2, batch_size=2, progress=False)
    assert len(losses) == 2
    assert all(loss == loss for loss in losses)
    path = detector.save(tmp_path / "detector.safetensors")
    loaded = FasterRCNNDetector.load(path)
    assert isinstance(loaded, LesionDetector)
    found = loaded.detect(images[:1].float() / 255)
    assert found[0].boxes.shape[1] == 4
    with pytest.raises(FileNotFoundError, match="comcl-detector"):
        FasterRCNNDetector.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="no image has a lesion box"):
        train_detector(images[:1], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], steps=1, progress=False)


def test_detector_recipe_trains_from_synthetic_masks(tmp_path):
    from qualcl.recipes.comcl import detector_config, run_comcl_detector
    from qualcl.recipes.comcl.detector import FasterRCNNDetector

    config = detector_config("smoke")
    metrics = run_comcl_detector(config, tmp_path / "det")
    assert metrics["train_images"] + metrics["test_images"] == config.data.num_images
    assert set(metrics["test"]) == {"recall_iou50", "precision_iou50", "boxes_per_image"}
    detector = FasterRCNNDetector.load(tmp_path / "det" / "weights" / "detector.safetensors")
    assert detector.classes == ("MA", "HE", "EX", "NV")
    assert (tmp_path / "det" / "plots" / "detector.png").is_file()  # the stage's declared history
    assert "detector.png" in (tmp_path / "det" / "MODEL_CARD.md").read_text()


def test_detector_box_head_width_keeps_torchvision_by_default_and_round_trips_narrow(tmp_path):
    torch.manual_seed(0)
    default = FasterRCNNDetector("mobilenet_v3", 64)
    assert default.model.roi_heads.box_head.fc6.out_features == 1024  # torchvision's head, untouched
    torch.manual_seed(0)
    reference = detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=5)
    ours, theirs = default.model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    narrow = FasterRCNNDetector("mobilenet_v3", 64, box_head_width=8)
    assert narrow.model.roi_heads.box_predictor.cls_score.in_features == 8
    loaded = FasterRCNNDetector.load(narrow.save(tmp_path / "narrow.safetensors"))
    assert loaded.box_head_width == 8
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.model.state_dict().values(), narrow.model.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="box_head_width must be >= 1"):
        FasterRCNNDetector("mobilenet_v3", 64, box_head_width=0)


def test_detect_boxes_returns_pixel_boxes_per_image(tmp_path):
    from qualcl.recipes.comcl.detector import detect_boxes

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (2, 3, 64, 64), generator=g, dtype=torch.uint8)
    detector, _ = train_detector(
        images, [torch.tensor([[8.0, 8.0, 16.0, 16.0]])] * 2, [torch.tensor([1])] * 2, steps=1, progress=False
    )
    path = detector.save(tmp_path / "d.safetensors")
    boxes = detect_boxes(path, images, min_score=0.0)
    assert len(boxes) == 2
    assert all(b.dtype == torch.long and b.ndim == 2 and b.shape[1] == 4 for b in boxes)
