"""The worked example of docs/recipes.md ("Write a sixth recipe") runs at smoke size on the shared skeleton.

``docs/examples/simclr_recipe.py`` is a whole recipe in under 150 lines: this runs it end to end and checks the
run folder, that a finished run reloads instead of training again (from Python and from its command line), and
that the one ablation runner runs its declared variant.
"""

import importlib.util
import json
import math
import re
import runpy
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from qualcl.recipes.ablation import run_ablation
from qualcl.recipes.run_folder import RunFolder, read_metrics

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "simclr_recipe.py"


def _import_example():
    spec = importlib.util.spec_from_file_location("simclr_recipe", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the config dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


example = _import_example()


class _NoTraining(Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        raise AssertionError("a finished stage was trained again")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke config, its synthetic data in a folder of the test's own."""
    data = tmp_path_factory.mktemp("synthetic")
    return example.SPEC.config("smoke", overrides=["trainer.logger=none", f"data.data_dir={data}"])


@pytest.fixture(scope="module")
def whole(smoke, tmp_path_factory):
    """One smoke run: SimCLR pre-training, then fine-tuning and the per-quality evaluation."""
    out = tmp_path_factory.mktemp("run") / "simclr"
    return out, example.SIMCLR.run(smoke, out)


def test_the_example_stays_short_and_the_docs_quote_it_as_it_is():
    assert len(EXAMPLE.read_text().splitlines()) < 150
    section = (ROOT / "docs" / "recipes.md").read_text().split("## Write a sixth recipe", 1)[1].split("\n## ", 1)[0]
    assert '--8<-- "docs/examples/simclr_recipe.py"' in section  # the whole file, included by pymdownx.snippets
    source = {line.rstrip() for line in EXAMPLE.read_text().splitlines()}
    excerpts = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(excerpts) >= 5
    quoted = [line.rstrip() for block in excerpts for line in block.splitlines() if "--8<--" not in line]
    missing = [line for line in quoted if line.strip() not in ("", "...") and line not in source]
    assert not missing, missing


def test_the_run_folder_is_complete(smoke, whole):
    run, metrics = whole
    for name in ("config.yaml", "stages.json", "metrics.json", "metrics.csv", "MODEL_CARD.md"):
        assert (run / name).is_file(), name
    for stage in ("pretrain", "finetune"):
        assert (run / "plots" / f"{stage}.png").is_file(), stage
    assert {p.name for p in (run / "weights").iterdir()} == {f"{n}.safetensors" for n in ("encoder", "head", "grader")}
    test = read_metrics(run / "metrics.json")["test"]
    assert list(metrics["test"]) == ["overall", "Good", "Usable", "Reject"]  # overall, then every level, best first
    assert set(test) == set(metrics["test"])
    assert sum(test[level]["n"] for level in ("Good", "Usable", "Reject")) == test["overall"]["n"] > 0
    for cells in test.values():  # an empty level is listed with n = 0 and NaN metrics (the stratify rule)
        assert set(cells) == {"qwk", "kappa", "accuracy", "macro_f1", "n"}
        assert all(math.isnan(cells[k]) for k in ("qwk", "accuracy")) == (cells["n"] == 0)
    history = RunFolder(run).read_history("pretrain")
    assert [row["step"] for row in history] == list(range(smoke.steps)) and all("loss" in r for r in history)
    assert {"loss", "val_kappa", "val_accuracy"} <= set(RunFolder(run).read_history("finetune")[0])
    card = (run / "MODEL_CARD.md").read_text()
    assert "QWK" in card and "Good" in card and "plots/pretrain.png" in card and "plots/finetune.png" in card


def test_a_finished_run_reloads_instead_of_retraining(smoke, whole, monkeypatch, capsys):
    run, metrics = whole
    stages = (run / "stages.json").read_text()
    again = example.SIMCLR.run(smoke, run, callbacks=[_NoTraining()])
    assert json.dumps(again["test"], sort_keys=True) == json.dumps(metrics["test"], sort_keys=True)
    # the same run through the example's command line (qualcl run's options): reloaded, not trained
    argv = ["--preset", "smoke", "--out", str(run), "--logger", "none", "--set", f"data.data_dir={smoke.data.data_dir}"]
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), *argv])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert done.value.code == 0
    assert str(run) in capsys.readouterr().out  # the summary names the run folder
    assert (run / "stages.json").read_text() == stages


def test_the_declared_ablation_runs_one_variant_with_one_seed(smoke, tmp_path):
    out = tmp_path / "ablation"
    results = run_ablation(example.SIMCLR, smoke, out, seeds=[0], variants=["scratch"], progress=False)
    assert list(results) == ["scratch"]
    assert len(results["scratch"]["overall"]["qwk"]) == 1 and set(results["scratch"]) >= {"overall", "Good"}
    run = out / "scratch" / "seed0"
    assert not RunFolder(run).stage_done("pretrain") and RunFolder(run).stage_done("finetune")  # steps=0: no SimCLR
    table = (out / "ablation.md").read_text()
    assert "no pre-training" in table and "QWK" in table
    assert (out / "ablation.png").is_file()
