"""The recipe skeleton below the driver: data-config base, loaders, RecipeModule, history plots, ablation runner."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import lightning as L
import matplotlib.image
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from qualcl.recipes.ablation import variant_config
from qualcl.recipes.config import DataConfig, RecipeConfig, RecipeSpec, Variant, dataset_choices
from qualcl.recipes.driver import check_data, train_loader
from qualcl.recipes.modules import RUNNING_SUMS, History, RecipeModule
from qualcl.recipes.plots import plot_history


@dataclass
class _Data(DataConfig):
    dataset: Literal["synthetic", "eyeq"] = "synthetic"
    image_size: int = 32


@dataclass
class _Config(RecipeConfig):
    data: _Data = field(default_factory=_Data)


def test_the_datasets_are_declared_once_in_the_data_config():
    assert dataset_choices(_Config) == ("synthetic", "eyeq")
    spec = RecipeSpec(name="toy", config_class=_Config, presets={"default": {}})
    assert spec.datasets == ("synthetic", "eyeq")
    with pytest.raises(ValueError, match="data.dataset must be one of"):
        spec.config(dataset="eyepacs")
    assert spec.config(dataset="eyeq").data.image_size == 32  # a recipe's own default


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.num_images=0", "data.num_images"),
        ("data.lq_ratio=1.5", "data.lq_ratio"),
        ("data.image_size=4", "image"),
        ("data.extra_test_images=-1", "data.extra_test_images"),
    ],
)
def test_shared_data_fields_are_checked_at_their_key(override, key):
    spec = RecipeSpec(name="toy", config_class=_Config, presets={"default": {}})
    with pytest.raises(ValueError, match=key):
        spec.config(overrides=[override])


def test_a_real_dataset_needs_its_folder():
    check_data(_Config())
    with pytest.raises(ValueError, match="--data DIR is required with --dataset eyeq"):
        check_data(_Config(data=_Data(dataset="eyeq")))
    check_data(_Config(data=_Data(dataset="eyeq", data_dir="somewhere")))


@pytest.mark.parametrize("name", ["comcl", "mkcnet", "mirror-retrieval", "fundus-mm", "local-discrimination"])
def test_extra_test_images_join_the_test_split_of_every_recipes_synthetic_set(name, tmp_path):
    from qualcl.data.synthetic import load_fundus_dataset
    from qualcl.recipes import RECIPES
    from qualcl.recipes.driver import RunContext

    spec = RECIPES[name].load_spec()
    roots = []
    for n in (0, 6):
        config = spec.config("smoke", overrides=[f"data.extra_test_images={n}"])
        roots.append(RunContext(config, tmp_path / str(n)).dataset_root(config.data))
    plain, more = (load_fundus_dataset(root).splits for root in roots)
    assert more["train"] == plain["train"] and len(more["test"]) == len(plain["test"]) + 6


def test_train_loader_shards_shuffles_and_names_the_batch_size():
    dataset = TensorDataset(torch.arange(10))
    build = train_loader(dataset, 4, seed=0)
    loader = build()
    assert isinstance(loader, DataLoader) and [len(b[0]) for b in loader] == [4, 4]  # drop_last
    with pytest.raises(ValueError, match="pretrain.batch_size=16"):
        train_loader(dataset, 16, seed=0, name="pretrain.batch_size")


class _Toy(RecipeModule):
    history = History(curves={"loss": "loss"}, metrics={"val_error": "val error"}, extra=("scale",))
    monitor = "error"

    def __init__(self, validate: bool = True) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.do_validate = validate

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = ((self.layer(x).squeeze(1) - y) ** 2).mean()
        self.record(loss=loss)
        return loss

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        x, y = batch
        self.collect(error=(self.layer(x).squeeze(1) - y).abs())

    def validation_metrics(self, outputs: dict[str, Tensor]) -> dict[str, float]:
        return {"error": float(outputs["error"].mean())}

    def epoch_extras(self) -> dict[str, float]:
        return {"scale": 1.0}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _NoValidation(_Toy):
    validation_step = L.LightningModule.validation_step  # type: ignore[assignment]


def _trainer(epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=2,
    )


def _data() -> DataLoader:
    x = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1)), batch_size=4)


def test_epoch_rows_hold_the_means_of_the_epoch_and_the_gathered_validation_metrics():
    module = _Toy()
    _trainer(2).fit(module, _data(), _data())
    rows = module.history_rows
    assert [r["epoch"] for r in rows] == [0.0, 1.0]  # no row from the sanity check
    assert set(rows[0]) == {"epoch", "loss", "val_error", "scale"}
    assert all(math.isfinite(r["loss"]) and r["val_error"] >= 0 for r in rows)


def test_a_module_without_validation_writes_its_row_when_the_epoch_ends():
    module = _NoValidation()
    assert not module.validates and _Toy().validates
    _trainer(3).fit(module, _data())
    assert [r["epoch"] for r in module.history_rows] == [0.0, 1.0, 2.0]


def test_undeclared_keys_are_refused_with_the_declared_ones():
    with pytest.raises(KeyError, match=r"undeclared history key\(s\) \['lsos'\].*'loss'"):
        _Toy().record(lsos=1.0)


def test_running_sums_of_an_unfinished_epoch_survive_a_checkpoint():
    module = _Toy()
    module.record(loss=2.0)
    module.record(loss=4.0)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint[RUNNING_SUMS] == {"sums": {"loss": 6.0}, "counts": {"loss": 2}}
    resumed = _Toy()
    resumed.on_load_checkpoint(checkpoint)
    resumed.record(loss=6.0)
    assert resumed.epoch_means() == {"loss": 4.0} and resumed.epoch_means() == {}


def test_step_rows_are_one_per_record():
    class Steps(_Toy):
        history = History(every="step", curves={"loss": "loss"})

    module = Steps()
    module.record(loss=1.0)
    module.record(loss=2.0)
    assert [r["loss"] for r in module.history_rows] == [1.0, 2.0] and "step" in module.history_rows[0]


def test_plot_history_draws_the_declared_series(tmp_path):
    rows = [{"epoch": float(e), "loss": 1.0 / (e + 1), "val_error": 0.1 * e} for e in range(4)]
    path = plot_history(rows, _Toy.history, tmp_path / "h.png", title="toy")
    assert path is not None and matplotlib.image.imread(path).shape[0] > 100
    assert plot_history([], _Toy.history, tmp_path / "none.png", title="toy") is None


def test_variant_config_applies_the_overrides_as_set_does():
    variants = {"small": Variant("smaller images", ("data.image_size=16",)), "bad": Variant("bad", ("data.nope=1",))}
    config = variant_config(_Config(), variants, "small", seed=5, data_dir="shared")
    assert (config.data.image_size, config.seed, config.data.data_dir) == (16, 5, "shared")
    assert not config.trainer.progress
    with pytest.raises(ValueError, match="ablation variant 'bad'.*unknown key 'nope'"):
        variant_config(_Config(), variants, "bad", seed=0)
    with pytest.raises(ValueError, match="did you mean 'small'"):
        variant_config(_Config(), variants, "smal", seed=0)


def test_lightning_banners_are_dropped(capfd):
    import qualcl.recipes.trainer  # noqa: F401  (installs the filter)

    _trainer(1).fit(_Toy(), _data(), _data())
    err = capfd.readouterr().err
    assert "GPU available" not in err and "TPU available" not in err and "max_epochs=1" not in err


def test_the_end_of_run_summary_is_one_aligned_table_with_one_strata_order():
    from qualcl.recipes.mirror_retrieval.recipe import MIRROR_RETRIEVAL

    config = MIRROR_RETRIEVAL.config("smoke")
    cell = {"map@5": 0.5, "n": 3}
    metrics = {
        "test": {
            "overall": cell,
            "by_grade": {"grade 1": {"map@5": 0.25, "n": 1}, "grade 0": cell},
            "by_quality": {"Reject": {"map@5": float("nan"), "n": 0}, "Good": cell, "Usable": cell},
        }
    }
    lines = MIRROR_RETRIEVAL.summary(config, metrics).splitlines()
    assert lines[0] == "mAP@5 on the test set:"
    assert [line.split()[0] for line in lines[2:]] == ["overall", "Good", "Usable", "Reject", "grade", "grade"]
    assert lines[5].split()[-1] == "—" and lines[2].split()[-1] == "0.500"
    assert len({len(line) for line in lines[1:]}) == 1  # aligned


def test_a_stratum_empty_in_one_test_set_is_shown_in_the_others():
    """Image-text summary: Good is empty in the 100 % low-quality test set only, not in the original one."""
    from qualcl.recipes.fundus_mm.recipe import FUNDUS_MM

    config = FUNDUS_MM.config("smoke")
    zero_shot = {
        "original": {"overall": {"accuracy": 0.5, "n": 4}, "Good": {"accuracy": 0.75, "n": 2}},
        "lq_100": {"overall": {"accuracy": 0.25, "n": 4}, "Good": {"accuracy": float("nan"), "n": 0}},
    }
    lines = FUNDUS_MM.summary(config, {"test": {"zero_shot": zero_shot}}).splitlines()
    assert lines[1].split() == ["stratum", "original", "lq_100"]
    good = next(line for line in lines if line.split()[0] == "Good")
    assert good.split()[1:] == ["0.750", "—"]


def test_comcl_summary_shows_every_stratum_of_every_test_set():
    """CoMCL's raised-LQ test sets have strata too: the summary reads them, not the ablation's overall-only cells."""
    from qualcl.recipes.comcl.recipe import COMCL

    config = COMCL.config("smoke")
    test = {
        setting: {
            "overall": {"qwk": 0.5 + shift, "accuracy": 0.5, "n": 4},
            "Good": {"qwk": 0.25 + shift, "accuracy": 0.5, "n": 2 if setting != "lq_100" else 0},
            "Reject": {"qwk": 0.75 + shift, "accuracy": 0.5, "n": 2},
        }
        for setting, shift in (("original", 0.0), ("lq_70", 0.01), ("lq_100", 0.02))
    }
    lines = COMCL.summary(config, {"test": test}).splitlines()
    assert lines[0] == "QWK on the test sets:"
    assert lines[1].split() == ["stratum", "original", "lq_70", "lq_100"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["Good"] == ["0.250", "0.260", "—"]
    assert rows["Reject"] == ["0.750", "0.760", "0.770"]


def test_lazy_exports_are_the_type_checking_block(tmp_path):
    from qualcl.recipes._cli import type_checking_exports

    source = tmp_path / "pkg.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from a.b import C, d as e\n"
        "    from a.r import RECIPE\n"
        "    config = RECIPE.config\n"
        "x = 1\n"
    )
    assert type_checking_exports(source) == {"C": "a.b", "e": "a.b", "RECIPE": "a.r", "config": "a.r:RECIPE.config"}


@pytest.mark.parametrize("package", ["comcl", "mkcnet", "mirror_retrieval", "fundus_mm", "local_discrimination"])
def test_every_exported_name_of_a_recipe_package_resolves(package):
    import importlib

    module = importlib.import_module(f"qualcl.recipes.{package}")
    assert [name for name in module.__all__ if not hasattr(module, name)] == []


def test_progress_bars_name_the_stage_and_leave_out_the_logger_version(capfd, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from qualcl.recipes.trainer import EpochProgressBar

    trainer = L.Trainer(
        max_epochs=2,
        logger=CSVLogger(tmp_path),  # a logger: Lightning's bars would show its version, v_num
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[EpochProgressBar("finetune")],
    )
    trainer.fit(_Toy(), _data(), _data())
    captured = capfd.readouterr()
    shown = captured.out + captured.err  # tqdm writes where Lightning points it
    assert "finetune, epoch 2/2" in shown and "v_num" not in shown and "loss" in shown


def test_the_ablation_table_shows_per_stratum_every_metric_the_strata_have():
    from qualcl.recipes.ablation import ablation_table
    from qualcl.recipes.mirror_retrieval.recipe import MIRROR_RETRIEVAL

    config = MIRROR_RETRIEVAL.config("smoke")
    nan = float("nan")
    results = {
        "a": {
            "overall": {"map@5": [0.5, 0.7], "precision@5": [0.4, 0.4], "ndcg@5": [0.3, 0.3]},
            "Reject": {"map@5": [0.2, 0.4], "precision@5": [0.1, 0.3], "ndcg@5": [nan, nan]},
            "Good": {"map@5": [0.6, 0.6], "precision@5": [0.5, 0.5], "ndcg@5": [nan, nan]},
        }
    }
    table = ablation_table(MIRROR_RETRIEVAL, config, results, {"a": Variant("variant A")}, [0, 1])
    assert "| variant A | 0.600 ± 0.141 | 0.400 ± 0.000 | 0.300 ± 0.000 |" in table
    assert "## mAP@5 per stratum" in table and "## P@5 per stratum" in table and "NDCG@5 per stratum" not in table
    assert "| variant | Good | Reject |" in table  # one strata order: best quality first
