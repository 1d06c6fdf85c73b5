"""The shared recipe skeleton: config resolution, ranks, read-only run folders, model cards, loggers, tables."""

import importlib.util
import pathlib
from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch

from qualcl.data import ImageTable
from qualcl.recipes.comcl import COMCL
from qualcl.recipes.config import RecipeConfig, parse_overrides, resolve_config
from qualcl.recipes.driver import is_global_zero, stage_seed
from qualcl.recipes.run_folder import ModelCard, RunFolder, machine_description, strata_table
from qualcl.recipes.trainer import check_logger, make_logger


@dataclass
class _Data:
    dataset: Literal["synthetic", "big"] = "synthetic"
    data_dir: str | None = None
    classes: int = 3
    size: int = 32


@dataclass
class _Config(RecipeConfig):
    data: _Data = field(default_factory=_Data)
    lr: float = 0.1


PRESETS = {"default": {}, "smoke": {"data": {"size": 8}, "lr": 0.5}}


def _settings(dataset: str, preset: str) -> dict:
    return {"data": {"classes": 9}} if dataset == "big" else {}


def test_config_resolution_order_defaults_preset_dataset_arguments_overrides_seed():
    config = resolve_config(_Config, PRESETS, "smoke", dataset_settings=_settings)
    assert (config.preset, config.data.size, config.lr, config.data.classes) == ("smoke", 8, 0.5, 3)
    config = resolve_config(_Config, PRESETS, "smoke", dataset_settings=_settings, dataset="big", data_dir="/d", seed=4)
    assert (config.data.dataset, config.data.classes, config.data.data_dir, config.seed) == ("big", 9, "/d", 4)
    # a --set wins over the dataset's settings; a --set of the dataset brings them
    config = resolve_config(_Config, PRESETS, dataset_settings=_settings, overrides=["data.dataset=big", "lr=1"])
    assert (config.data.classes, config.lr) == (9, 1.0)
    config = resolve_config(_Config, PRESETS, dataset_settings=_settings, dataset="big", overrides=["data.classes=2"])
    assert config.data.classes == 2
    assert resolve_config(_Config, PRESETS).trainer.precision == "32"


def test_config_errors_name_the_key_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; choose one of \['default', 'smoke'\]"):
        resolve_config(_Config, PRESETS, "huge")
    with pytest.raises(ValueError, match=r"config.data.dataset must be one of \['synthetic', 'big'\], got 'tiny'"):
        resolve_config(_Config, PRESETS, dataset="tiny")
    with pytest.raises(ValueError, match=r"config.data: unknown key 'colour'"):
        resolve_config(_Config, PRESETS, overrides=["data.colour=1"])
    with pytest.raises(ValueError, match=r"config.data.size must be int, got True"):
        resolve_config(_Config, PRESETS, overrides=["data.size=true"])
    with pytest.raises(ValueError, match=r"trainer.devices must be >= 1"):
        resolve_config(_Config, PRESETS, overrides=["trainer.devices=0"])
    with pytest.raises(ValueError, match="not valid YAML"):
        parse_overrides(["lr=!!python/object/apply:os.system ['true']"])
    with pytest.raises(ValueError, match="key.sub=value"):
        parse_overrides(["lr"])
    with pytest.raises(ValueError, match="conflicts"):
        parse_overrides(["data=1", "data.size=2"])
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=x"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}


def test_every_stage_has_its_own_reproducible_seed():
    assert stage_seed(0, "pretrain") == stage_seed(0, "pretrain")
    assert len({stage_seed(s, n) for s in range(3) for n in ("pretrain", "finetune")}) == 6


def test_global_rank_zero_from_the_launchers_environment(monkeypatch):
    for key in ("RANK", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's own launcher, second process
    assert not is_global_zero()
    monkeypatch.setenv("RANK", "0")  # torchrun names the global rank
    assert is_global_zero()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "2")
    assert not is_global_zero()
    monkeypatch.setenv("SLURM_NTASKS", "1")  # an interactive allocation's shell is not a task of a job step
    assert is_global_zero()


def test_a_read_only_run_folder_writes_nothing(tmp_path):
    run = RunFolder(tmp_path / "run", writable=False)
    assert not (tmp_path / "run").exists()
    assert run.save_config(_Config()) is None
    run.mark_done("x", seconds=1)
    run.append_history("x", {"step": 0})
    run.write_metrics({"a": 1})
    run.save_weights(torch.nn.Linear(2, 2), "w")
    assert run.write_model_card(ModelCard("t", "p", "s")) is None
    assert not (tmp_path / "run").exists() and not run.stage_done("x")


def test_strata_table_leaves_out_empty_strata():
    results = {
        "original": {"overall": {"qwk": 0.5, "accuracy": 0.4, "n": 10}, "Good": {"qwk": 0.6, "accuracy": 0.5, "n": 7}},
        "lq_100": {"overall": {"qwk": 0.3, "accuracy": 0.2, "n": 10}, "Good": {"qwk": float("nan"), "n": 0}},
    }
    results["original"]["Reject"] = {"qwk": float("nan"), "n": 0}
    results["lq_100"]["Reject"] = {"n": 0}
    table = strata_table(results, {"qwk": "QWK", "accuracy": "ACC"})
    assert "| Good | 0.600 / 0.500 (n=7) | — |" in table
    assert "Reject" not in table and "nan" not in table
    assert table.endswith("Cells: QWK / ACC (n images).")


def test_model_card_shows_headline_table_and_existing_plots(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(b"png")
    card = ModelCard("Title", "Paper", "Summary.", {"AUC": 0.75}, "| t |", ["a.png", "missing.png"]).render(tmp_path)
    assert "**AUC** 0.750" in card and "| t |" in card and "![a](plots/a.png)" in card and "missing" not in card


def test_model_card_names_the_processor_and_threads_its_numbers_came_from(tmp_path, monkeypatch):
    # float rounding, and with it a run's training path, depends on the processor and the thread count
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    card = ModelCard("Title", "Paper", "Summary.").render(tmp_path)
    environment = card.split("## Environment", 1)[1]
    assert f"{machine_description()}, written" in environment and "(1 thread)" in environment
    assert "bit for bit on the same kind of processor and thread count" in environment
    if pathlib.Path("/proc/cpuinfo").is_file():  # Linux names the model
        model = next(line for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line)
        assert model.split(":", 1)[1].strip() in environment


def test_loggers(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert make_logger("none", run, "train") is False
    logger = make_logger("csv", run, "train")
    assert logger.log_dir.startswith(str(tmp_path / "run" / "logs" / "train"))
    for kind, package in (("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow")):
        if importlib.util.find_spec(package) is None:
            with pytest.raises(ValueError, match=f"--logger {kind} needs the '{package}' package"):
                check_logger(kind)
        else:
            check_logger(kind)


def test_a_missing_logger_package_fails_before_anything_is_written(tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    config = COMCL.config("smoke", overrides=["trainer.logger=wandb"])
    with pytest.raises(ValueError, match="wandb"):
        COMCL.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_image_table_checks_its_columns_and_subsets_them():
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    label, quality = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0])
    table = ImageTable(images, label, quality, ("HQ", "LQ"), caption=["a", "b", "c"], codes={"x": label * 2})
    sub = table.subset([2, 1])
    assert sub.caption == ["c", "b"] and sub.codes["x"].tolist() == [4, 2] and sub.patient is None
    assert table.lq_ratio == pytest.approx(1 / 3)
    assert table.replace_images(images + 1).images.max() == 1
    with pytest.raises(ValueError, match="column caption has 2 entries for 3 images"):
        ImageTable(images, label, quality, ("HQ", "LQ"), caption=["a", "b"])
    with pytest.raises(ValueError, match="quality must index"):
        ImageTable(images, label, quality + 1, ("HQ", "LQ"))
    with pytest.raises(ValueError, match="uint8"):
        ImageTable(images.float(), label, quality, ("HQ", "LQ"))


def test_step_budgeted_stages_show_one_bar_over_all_steps(tmp_path):
    """Not "Epoch 10/-2": a max_steps stage shows step k of max_steps across its epochs."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from qualcl.recipes.config import TrainerConfig
    from qualcl.recipes.trainer import StepProgressBar, make_trainer

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    config = TrainerConfig(accelerator="cpu", logger="none", progress=True)
    trainer = make_trainer(RunFolder(tmp_path / "run"), "pretrain", config, max_steps=7)
    loader = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)  # 3 batches an epoch
    trainer.fit(Module(), loader)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, StepProgressBar)
    assert (bar.train_progress_bar.total, bar.train_progress_bar.n) == (7, 7)
    assert bar.train_description == "pretrain (steps)"


def test_settings_this_machine_cannot_run_fail_before_anything_is_written(tmp_path):
    from qualcl.recipes.config import TrainerConfig
    from qualcl.recipes.trainer import check_trainer

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="--accelerator gpu: this machine has no CUDA GPU"):
        check_trainer(TrainerConfig(accelerator="gpu"))
    with pytest.raises(ValueError, match="--precision 16-mixed needs a GPU"):
        check_trainer(TrainerConfig(precision="16-mixed"))
    check_trainer(TrainerConfig(accelerator="cpu", precision="bf16-mixed"))
    config = COMCL.config("smoke", overrides=["trainer.accelerator=gpu"])
    with pytest.raises(ValueError, match="no CUDA GPU"):
        COMCL.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
