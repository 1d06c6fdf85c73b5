"""The image–text recipe end to end at smoke size: run folder, every evaluation, exact resume, CLI, bad configs."""

import json
import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from qualcl.cli import main
from qualcl.recipes.fundus_mm import ImageTextPretraining, fundus_mm_config, run_fundus_mm
from qualcl.recipes.run_folder import RunFolder


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("synthetic"))
    return fundus_mm_config("smoke", overrides=["trainer.logger=none", f"data.data_dir={data_dir}"])


@pytest.fixture(scope="module")
def whole(smoke, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    return out, run_fundus_mm(smoke, out)


def test_smoke_run_writes_every_evaluation(smoke, whole):
    run, metrics = whole
    for name in ("config.yaml", "metrics.json", "metrics.csv", "MODEL_CARD.md", "stages.json"):
        assert (run / name).is_file(), name
    plots = ("pretrain", "finetune", "reconstructions", "zero_shot_confusion", "prompt_similarity", "pretrain_collapse")
    for plot in plots:
        assert (run / "plots" / f"{plot}.png").is_file(), plot
    assert (run / "history" / "pretrain_collapse.csv").is_file()  # the collapse monitor
    assert {p.name for p in (run / "weights").iterdir()} == {
        "fundus_mm.safetensors",
        "fundus_mm_objectives.safetensors",  # the objectives' learnt logit scale, beside the network
        "fundus_mm_finetuned.safetensors",
        "tokenizer.json",
    }
    assert set(load_file(str(run / "weights" / "fundus_mm_objectives.safetensors"))) == {"contrastive.log_logit_scale"}
    assert not any("loss" in key for key in load_file(str(run / "weights" / "fundus_mm.safetensors")))
    test = metrics["test"]
    settings = {"original", "lq_70", "lq_100"}
    assert set(test["zero_shot"]) == settings == set(test["few_shot"]) == set(test["finetune"])
    for block in (test["zero_shot"], test["finetune"]):
        assert set(block["original"]) == {"overall", "Good", "Usable", "Reject"}
        assert block["lq_100"]["overall"]["lq_ratio"] == 1.0 and block["lq_100"]["Good"]["n"] == 0
        assert 0.0 <= block["original"]["overall"]["accuracy"] <= 1.0
    for shots in smoke.eval.shots:
        for head in ("linear_probe", "prompt_head"):
            cell = test["few_shot"]["original"][f"{shots}_shot"][head]["overall"]["accuracy"]
            assert 0.0 <= cell["mean"] <= 1.0 and cell["std"] >= 0.0
    assert set(test["recall"]) == {f"{d}_r@{k}" for d in ("i2t", "t2i") for k in smoke.eval.recall_k}
    assert all(0.0 <= v <= 1.0 for v in test["recall"].values())
    history = RunFolder(run).read_history("pretrain")
    assert [r["epoch"] for r in history] == list(range(smoke.train.epochs))
    terms = ("contrastive", "image", "caption")
    keys = {"val_zero_shot", "logit_scale", *(f"loss_{t}" for t in terms), *(f"val_loss_{t}" for t in terms)}
    assert all(keys <= set(r) for r in history)
    assert all(math.isfinite(r["loss"]) for r in history)
    card = (run / "MODEL_CARD.md").read_text()
    assert "zero-shot acc" in card and "Reject" in card
    again = run_fundus_mm(smoke, run)  # a finished run reads its weights back and evaluates the same
    assert json.dumps(again["test"], sort_keys=True) == json.dumps(test, sort_keys=True)


def test_fine_tuning_leaves_the_pretrained_encoder_to_the_other_evaluations(smoke, whole, tmp_path):
    """Zero-shot, recall and few-shot evaluate the pre-training: a run without fine-tuning scores the same."""
    import dataclasses

    _, metrics = whole
    no_finetune = dataclasses.replace(smoke, eval=dataclasses.replace(smoke.eval, finetune_epochs=0))
    other = run_fundus_mm(no_finetune, tmp_path / "run")["test"]
    for key in ("zero_shot", "few_shot", "recall"):
        assert json.dumps(other[key], sort_keys=True) == json.dumps(metrics["test"][key], sort_keys=True), key
    assert other["finetune"] == {} != metrics["test"]["finetune"]


class _StopAt(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if isinstance(pl_module, ImageTextPretraining) and trainer.current_epoch == 1 and batch_idx == 1:
            raise KeyError("stop")


def test_resume_after_interruption_reproduces_the_uninterrupted_run(smoke, whole, tmp_path):
    reference, _ = whole
    run = tmp_path / "run"
    with pytest.raises(KeyError):
        run_fundus_mm(smoke, run, callbacks=[_StopAt()])
    assert not RunFolder(run).stage_done("pretrain")
    run_fundus_mm(smoke, run)
    assert (
        json.loads((run / "metrics.json").read_text())["test"]
        == json.loads((reference / "metrics.json").read_text())["test"]
    )
    for name in ("fundus_mm", "fundus_mm_objectives", "fundus_mm_finetuned"):
        left = load_file(str(run / "weights" / f"{name}.safetensors"))
        right = load_file(str(reference / "weights" / f"{name}.safetensors"))
        assert all(torch.equal(left[k], right[k]) for k in left), name
    assert (run / "history" / "pretrain.csv").read_text() == (reference / "history" / "pretrain.csv").read_text()


def test_cli_runs_the_recipe(smoke, tmp_path, capsys):
    out = tmp_path / "cli"
    data = smoke.data.data_dir
    sets = [f"data.data_dir={data}", "trainer.logger=none", "eval.finetune_epochs=0", "model.caption=autoregressive"]
    code = main(["run", "fundus-mm", "--preset", "smoke", "--out", str(out)] + [a for s in sets for a in ("--set", s)])
    assert code == 0
    summary = capsys.readouterr().out  # the zero-shot accuracy per stratum, as tested and at raised LQ ratios
    assert "zero-shot acc on the test sets" in summary and "original   lq_70  lq_100" in summary
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["finetune"] == {} and "pretrain" in metrics["stages"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.caption=sideways", "caption"),
        ("model.mask_ratio=1.0", "mask_ratio"),
        ("data.image_size=40", "multiple of 16"),
        ("train.batch_size=1", "batch_size"),
        ("eval.shots=[0]", "shots"),
    ],
)
def test_bad_configs_are_refused_by_name(override, message):
    with pytest.raises(ValueError, match=message):
        fundus_mm_config("smoke", overrides=[override])


def test_real_datasets_need_their_folder(tmp_path):
    with pytest.raises(ValueError, match="--data DIR is required"):
        run_fundus_mm(fundus_mm_config("smoke", dataset="aptos"), tmp_path / "run")


def test_ablation_writes_its_table(smoke, tmp_path):
    from qualcl.recipes.fundus_mm import run_ablation

    fast = fundus_mm_config("smoke", overrides=["trainer.logger=none", f"data.data_dir={smoke.data.data_dir}",
                                                "eval.finetune_epochs=0"])  # fmt: skip
    results = run_ablation(fast, tmp_path / "ablation", seeds=[0], variants=["clip", "full"], progress=False)
    assert set(results) == {"clip", "full"}
    assert list(results["full"]) == ["overall", "Good", "Usable", "Reject"]
    assert all(0.0 <= v[0] <= 1.0 for v in (results["clip"]["overall"]["zero_shot"], results["full"]["overall"]["i2t"]))
    assert math.isnan(results["full"]["overall"]["finetune_acc"][0])  # fine-tuning switched off
    table = (tmp_path / "ablation" / "ablation.md").read_text()
    assert "CLIP (contrastive only)" in table and "36.24 / 46.83 / 85.07" in table
    assert (tmp_path / "ablation" / "ablation.png").is_file()
    assert "| variant | Good | Usable | Reject |" in table
    clip = load_file(str(tmp_path / "ablation" / "clip" / "seed0" / "weights" / "fundus_mm.safetensors"))
    assert not any(k.startswith(("mae_decoder", "caption_decoder", "fusion")) for k in clip)  # the variant's model
    again = run_ablation(fast, tmp_path / "ablation", seeds=[0], variants=["clip"], progress=False, run_missing=False)
    # finished runs are read back, not re-trained
    assert json.dumps(again["clip"], sort_keys=True) == json.dumps(results["clip"], sort_keys=True)
    with pytest.raises(ValueError, match="unknown ablation variant"):
        run_ablation(fast, tmp_path / "ablation", seeds=[0], variants=["nope"], progress=False)


def test_a_run_with_a_pretrained_text_tower_records_its_tokenizer(smoke, tmp_path):
    from tiny_models import write_tiny_bert

    bert = str(write_tiny_bert(tmp_path / "bert"))
    config = fundus_mm_config("smoke", overrides=[
        "trainer.logger=none", f"data.data_dir={smoke.data.data_dir}", "model.text_tower=pretrained",
        f"model.text_model={bert}", "eval.finetune_epochs=0",
    ])  # fmt: skip
    metrics = run_fundus_mm(config, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "weights" / "tokenizer.json").read_text())
    assert state["base"] == bert
    assert 0.0 <= metrics["test"]["zero_shot"]["original"]["overall"]["accuracy"] <= 1.0
    weights = load_file(tmp_path / "run" / "weights" / "fundus_mm.safetensors")
    assert any(name.startswith("text.model.") for name in weights)
