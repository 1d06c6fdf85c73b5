"""The local-discrimination recipe end to end at smoke size: run folder, resume, baselines, real layouts, bad input."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image
from safetensors.torch import load_file

from qualcl.data.views import LocalDiscriminationViews
from qualcl.functional import soft_dice_loss
from qualcl.recipes.local_discrimination import (
    ABLATIONS,
    LOCAL_DISCRIMINATION,
    LDNet,
    LDPretraining,
    SegmentationTransfer,
    ShapeDiscriminator,
    ShapeGuidedTraining,
    build_losses,
    pretraining_losses,
)
from qualcl.recipes.local_discrimination.config import PretrainConfig
from qualcl.recipes.run_folder import RunFolder

# two epochs per stage, so that every stage can be interrupted in the middle of its second epoch
LONGER = [
    "pretrain.stage1_epochs=2",
    "pretrain.stage2_epochs=2",
    "shape.epochs=2",
    "transfer.frozen_epochs=2",
    "transfer.finetune_epochs=2",
    "transfer.tasks=[vessels]",
    "trainer.logger=none",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ld_data") / "data"


@pytest.fixture(scope="module")
def whole(tmp_path_factory, data_dir):
    config = LOCAL_DISCRIMINATION.config("smoke", overrides=[*LONGER, f"data.data_dir={data_dir}"])
    out = tmp_path_factory.mktemp("ld") / "whole"
    metrics = LOCAL_DISCRIMINATION.run(config, out)
    return config, out, metrics


def test_smoke_run_writes_a_complete_run_folder(whole):
    _, out, metrics = whole
    for stage in ("pretrain_pd", "pretrain_ld"):  # the collapse monitor of both pre-training stages
        assert (out / "history" / f"{stage}_collapse.csv").is_file() and (
            out / "plots" / f"{stage}_collapse.png"
        ).is_file()
    stages = json.loads((out / "stages.json").read_text())
    assert set(stages) == {
        "pretrain_pd",
        "pretrain_ld",
        "shape",
        "transfer_vessels_frozen",
        "transfer_vessels_finetuned",
    }
    test = metrics["test"]
    for phase in ("frozen", "finetuned"):
        strata = test["segmentation"]["vessels"][phase]
        assert list(strata) == ["overall", "Good", "Usable", "Reject"]  # every level, an empty one with n 0
        assert 0.0 <= strata["overall"]["dice"] <= 1.0 and strata["Good"]["n"] > 0
    for name in ("disc", "fovea"):
        strata = test["landmarks"][name]
        assert list(strata) == ["overall", "Good", "Usable", "Reject"]
        assert strata["overall"]["mre"] >= 0 and 0 <= strata["overall"]["sdr@4"] <= 1
        assert strata["overall"]["n"] == sum(strata[level]["n"] for level in ("Good", "Usable", "Reject"))
    assert 0.0 <= test["shape_guided"]["overall"]["dice"] <= 1.0
    for plot in (
        "cluster_assignments.png",
        "embedding_pca.png",
        "segmentation_vessels_frozen.png",
        "landmarks_disc.png",
        "pretrain_pd.png",
        "pretrain_ld.png",
        "shape.png",
        "transfer_vessels_frozen.png",
        "transfer_vessels_finetuned.png",
        "dice_by_quality.png",
    ):
        assert (out / "plots" / plot).is_file(), plot
    card = (out / "MODEL_CARD.md").read_text()
    assert "qualcl's design" in card and "Dice" in card and "(plots/shape.png)" in card
    history = RunFolder(out).read_history("pretrain_ld")
    assert len(history) == 2 and {"pd", "mixup", "region", "entropy", "loss", "lr"} <= set(history[0])
    assert history[1]["lr"] == history[0]["lr"]  # halved every 10 epochs
    shape = RunFolder(out).read_history("shape")
    assert len(shape) == 2 and {"adversarial", "discriminator", "loss"} <= set(shape[0])
    transfer = RunFolder(out).read_history("transfer_vessels_frozen")
    assert [set(row) for row in transfer] == [{"epoch", "loss", "val_dice"}] * 2


class _StopAt(Callback):
    """Raises in the second batch of the second epoch of the stages of one module type."""

    def __init__(self, kind: type) -> None:
        self.kind = kind

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        if isinstance(pl_module, self.kind) and trainer.current_epoch == 1 and batch_idx == 1:
            raise KeyError("stop")


def test_interrupted_stages_resume_to_the_uninterrupted_run(whole, tmp_path):
    config, reference, _ = whole
    run = tmp_path / "run"
    for kind in (LDPretraining, ShapeGuidedTraining, SegmentationTransfer):
        with pytest.raises(KeyError):
            LOCAL_DISCRIMINATION.run(config, run, callbacks=[_StopAt(kind)])
    LOCAL_DISCRIMINATION.run(config, run)
    assert (
        json.loads((reference / "metrics.json").read_text())["test"]
        == json.loads((run / "metrics.json").read_text())["test"]
    )
    for weights in sorted(p.name for p in (reference / "weights").iterdir()):
        left, right = load_file(str(reference / "weights" / weights)), load_file(str(run / "weights" / weights))
        assert all(torch.equal(left[k], right[k]) for k in left), weights


@pytest.mark.parametrize("variant", sorted(ABLATIONS))
def test_every_baseline_runs_and_trains_what_it_says(variant, data_dir, tmp_path):
    overrides = [
        "transfer.tasks=[OD]",
        "transfer.finetune_epochs=0",
        "trainer.logger=none",
        f"data.data_dir={data_dir}",
        *ABLATIONS[variant].overrides,
    ]
    config = LOCAL_DISCRIMINATION.config("smoke", overrides=overrides)
    metrics = LOCAL_DISCRIMINATION.run(config, tmp_path / variant)
    stages = set(json.loads((tmp_path / variant / "stages.json").read_text()))
    expected = {
        "random": set(),
        "simclr": {"pretrain_simclr"},
        "dense": {"pretrain_dense"},
        "ld_stage1": {"pretrain_pd"},
        "ld": {"pretrain_pd", "pretrain_ld"},
    }[variant]
    assert stages == expected | {"transfer_OD_frozen"}
    assert metrics["method"] == config.pretrain.method


def _views(batch: int = 2) -> LocalDiscriminationViews:
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return LocalDiscriminationViews(images, size=32, length=batch)


@pytest.mark.parametrize("method", ["pd", "ld", "simclr", "dense"])
def test_every_pretraining_objective_is_finite_and_reaches_the_encoder(method):
    torch.manual_seed(0)
    views = _views()
    net = LDNet(dim=8, clusters=4)
    module = LDPretraining(net, views, PretrainConfig(grid=4, batch_size=2), method)
    batch = views.assemble(views.collate([views[0], views[1]]))
    terms, _ = pretraining_losses(net, batch, module.losses, grid=4, method=method, projection=module.projection)
    expected = {"pd": {"pd", "mixup"}, "ld": {"pd", "mixup", "region", "entropy"}, "simclr": {"nt_xent"}}
    assert set(terms) == expected.get(method, {"dense"})
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    first = next(net.encoder.parameters())
    assert first.grad is not None and bool(first.grad.abs().sum() > 0)


def test_the_transfer_dice_is_the_codes_batch_dice_unless_per_image():
    probs = torch.tensor([0.9, 0.2, 0.6, 0.1]).reshape(2, 1, 1, 2).expand(2, 1, 2, 2).contiguous()
    masks = torch.zeros(2, 1, 2, 2)
    masks[0] = 1
    masks[1, 0, 0, 0] = 1  # 4 and 1 foreground pixels: the two forms differ
    config = PretrainConfig()
    batch, per_image = (
        build_losses(config, gather=False)["dice"],
        build_losses(config, gather=False, per_image_dice=True)["dice"],
    )
    assert torch.equal(batch(probs, masks), soft_dice_loss(probs, masks, per_image=False))
    assert torch.equal(per_image(probs, masks), soft_dice_loss(probs, masks, per_image=True))
    assert not torch.allclose(batch(probs, masks), per_image(probs, masks))
    assert not LOCAL_DISCRIMINATION.config("smoke").transfer.per_image_dice  # the code's form by default


def test_the_discriminator_sees_masks_and_the_leaky_quirk_is_the_identity():
    quirk = ShapeDiscriminator(leaky_quirk=True)
    assert all(m.negative_slope == 1.0 for m in quirk.modules() if isinstance(m, torch.nn.LeakyReLU))
    assert ShapeDiscriminator()(torch.rand(3, 1, 48, 48)).shape == (3,)


def _drive_tree(root, images: int = 5) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:56, :56]
    disc = (yy - 28) ** 2 + (xx - 28) ** 2 <= 24**2
    for word, numbers in (("training", range(21, 21 + images)), ("test", range(1, 3))):
        for n in numbers:
            (root / word / "images").mkdir(parents=True, exist_ok=True)
            (root / word / "1st_manual").mkdir(parents=True, exist_ok=True)
            image = np.zeros((56, 56, 3), np.uint8)
            image[disc] = rng.integers(60, 250, (int(disc.sum()), 3))
            Image.fromarray(image).save(root / word / "images" / f"{n:02d}_{word}.tif")
            mask = np.zeros((56, 56), np.uint8)
            mask[26:30, 8:48] = 255
            Image.fromarray(mask).save(root / word / "1st_manual" / f"{n:02d}_manual1.gif")


def test_a_real_layout_runs_without_landmarks_or_shape_prior(tmp_path):
    _drive_tree(tmp_path / "DRIVE")
    config = LOCAL_DISCRIMINATION.config(
        "smoke",
        dataset="drive",
        data_dir=str(tmp_path / "DRIVE"),
        overrides=["data.labelled=0", "transfer.finetune_epochs=0", "trainer.logger=none"],
    )
    metrics = LOCAL_DISCRIMINATION.run(config, tmp_path / "run")
    assert "landmarks" not in metrics["test"] and "shape_guided" not in metrics["test"]
    assert list(metrics["test"]["segmentation"]["vessels"]["frozen"]) == ["overall", "unrated"]
    assert metrics["data"]["test"] == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.image_size=40", "multiple of 16"),
        ("pretrain.method=byol", "pretrain.method"),
        ("transfer.batch_size=1", "transfer.batch_size must be >= 2"),
        ("pretrain.grid=5", "multiple of pretrain.grid"),
        ("model.encoder=resnet10_tiny", "model.encoder needs a full-resolution first map"),
    ],
)
def test_wrong_settings_fail_when_the_config_is_built(override, message):
    with pytest.raises(ValueError, match=message):
        LOCAL_DISCRIMINATION.config("smoke", overrides=[override])


def test_real_datasets_need_their_folder_and_tasks_must_exist(tmp_path, data_dir):
    with pytest.raises(ValueError, match="--data DIR"):
        LOCAL_DISCRIMINATION.run(LOCAL_DISCRIMINATION.config("smoke", dataset="stare"), tmp_path / "a")
    config = LOCAL_DISCRIMINATION.config("smoke", overrides=["transfer.tasks=[cup]", f"data.data_dir={data_dir}"])
    with pytest.raises(ValueError, match="not masks of synthetic"):
        LOCAL_DISCRIMINATION.run(config, tmp_path / "b")


def test_cli_runs_the_recipe(data_dir, tmp_path, capsys):
    from qualcl.cli import main

    code = main(
        [
            "run",
            "local-discrimination",
            "--preset",
            "smoke",
            "--out",
            str(tmp_path / "cli"),
            "--set",
            f"data.data_dir={data_dir}",
            "--set",
            "transfer.tasks=[EX]",
            "--set",
            "transfer.finetune_epochs=0",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "everything else:" in printed and "EX Dice (frozen)" in printed and "overall" in printed


def test_ablation_writes_its_table_with_the_quality_gap(data_dir, tmp_path):
    from qualcl.recipes.local_discrimination import run_ablation

    config = LOCAL_DISCRIMINATION.config(
        "smoke", overrides=["transfer.tasks=[OD]", "trainer.logger=none", f"data.data_dir={data_dir}"]
    )
    results = run_ablation(config, tmp_path / "abl", seeds=[0], variants=["random", "ld_stage1"], progress=False)
    assert set(results) == {"random", "ld_stage1"}
    assert list(results["random"]) == ["overall", "Good", "Usable", "Reject"]
    assert len(results["random"]["overall"]["OD/finetuned"]) == 1
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| random initialisation |" in table and "LD stage 1" in table
    assert "OD Dice (finetuned)" in table and "OD Dice (frozen)" in table and "disc MRE px" in table
    assert "OD gap Good − Reject" in table and "## OD Dice (finetuned) per stratum" in table
    for plot in ("ablation.png", "ablation_dice.png"):
        assert (tmp_path / "abl" / plot).is_file()
    with pytest.raises(ValueError, match="unknown ablation variant"):
        run_ablation(config, tmp_path / "abl", variants=["byol"])
