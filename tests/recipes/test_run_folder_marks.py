"""Run folders are qualcl's only when marked, --overwrite deletes only there, and a failed start leaves nothing."""

from __future__ import annotations

import json

import pytest
import yaml

from qualcl.recipes.comcl.recipe import COMCL
from qualcl.recipes.config import config_to_dict
from qualcl.recipes.run_folder import MANIFEST, MARKER, RunFolder, RunFolderBusy, prepare_run_folder, read_metrics


def test_a_user_folder_that_looks_like_a_run_is_never_deleted(tmp_path):
    config = config_to_dict(COMCL.config("smoke"))
    mine = tmp_path / "mine"
    for sub in ("checkpoints", "plots", "weights"):
        (mine / sub).mkdir(parents=True)
        (mine / sub / "precious.txt").write_text("the user's own")
    (mine / "config.yaml").write_text(f"{MARKER} (copied by hand)\n" + yaml.safe_dump({"seed": 1}))
    (mine / "stages.json").write_text("{}")
    with pytest.raises(ValueError, match="qualcl deletes nothing there"):
        prepare_run_folder(mine, config, overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == ["checkpoints", "config.yaml", "plots", "stages.json", "weights"]
    assert all((mine / sub / "precious.txt").read_text() == "the user's own" for sub in ("checkpoints", "plots"))
    plain = tmp_path / "plain"
    (plain / "checkpoints").mkdir(parents=True)
    (plain / "stages.json").write_text("{}")  # no marker, no manifest: not a run folder at all
    with pytest.raises(ValueError, match="holds files qualcl did not write"):
        prepare_run_folder(plain, config, overwrite=True)


def test_overwrite_deletes_only_what_a_run_writes(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert json.loads((run.root / MANIFEST).read_text())["qualcl"]
    run.save_config(COMCL.config("smoke"), "comcl")
    (run.root / "notes.txt").write_text("mine")
    (run.root / "weights" / "w.safetensors").write_text("x")
    other = {**config_to_dict(COMCL.config("smoke")), "seed": 5}
    prepare_run_folder(run.root, other, overwrite=True)
    assert sorted(p.name for p in run.root.iterdir()) == [MANIFEST, "notes.txt"]


def test_overwrite_starts_over_with_the_same_config_too(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.save_config(COMCL.config("smoke"), "comcl")
    (run.root / "weights" / "w.safetensors").write_text("x")
    prepare_run_folder(run.root, config_to_dict(COMCL.config("smoke")))  # the same config resumes: kept
    assert (run.root / "weights" / "w.safetensors").is_file()
    prepare_run_folder(run.root, config_to_dict(COMCL.config("smoke")), overwrite=True)
    assert sorted(p.name for p in run.root.iterdir()) == [MANIFEST]


def test_a_run_stopped_before_its_config_was_written_starts_again_or_is_refused_by_name(tmp_path):
    config = config_to_dict(COMCL.config("smoke"))
    run = RunFolder(tmp_path / "run")  # the manifest, nothing else yet: the process died here
    prepare_run_folder(run.root, config)  # nothing to resume: it starts
    (run.root / "weights" / "w.safetensors").write_text("x")  # files of a run whose config is gone
    (run.root / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"--out .* holds a run's files \(weights\) but not its config.yaml"):
        prepare_run_folder(run.root, config)
    assert (run.root / "weights" / "w.safetensors").is_file()
    prepare_run_folder(run.root, config, overwrite=True)
    assert sorted(p.name for p in run.root.iterdir()) == [MANIFEST, "notes.txt"]


def test_a_failed_start_leaves_no_run_behind(tmp_path):
    recipe = COMCL
    out = tmp_path / "run"
    config = recipe.config("smoke")
    config.data.dataset = "eyeq"
    config.data.data_dir = str(tmp_path / "missing")
    with pytest.raises((ValueError, FileNotFoundError)):
        recipe.run(config, out)
    assert not out.exists()  # nothing written: the corrected command is not "another config"
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    run = RunFolder(existing)
    run.discard()  # a folder that held files before is never removed
    assert (existing / "keep.txt").read_text() == "x"


def test_metrics_json_is_strict_json_and_reads_back_nan(tmp_path):
    import math

    run = RunFolder(tmp_path / "run")
    path = run.write_metrics({"test": {"overall": {"qwk": 0.5}, "empty stratum": {"qwk": float("nan")}}})

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    strict = json.loads(path.read_text(), parse_constant=refuse)  # JavaScript's JSON.parse would accept it too
    assert strict["test"]["empty stratum"]["qwk"] is None
    back = read_metrics(path)
    assert back["test"]["overall"]["qwk"] == 0.5 and math.isnan(back["test"]["empty stratum"]["qwk"])
    assert "nan" in (run.root / "metrics.csv").read_text()


def test_a_run_folder_another_process_runs_into_is_refused_untouched(tmp_path):
    import subprocess
    import sys

    from qualcl.recipes.driver import run_recipe

    config = COMCL.config("smoke")
    run = RunFolder(tmp_path / "run")
    run.save_config(config, "comcl")  # the same run: without the other process, this would resume
    before = sorted(str(p.relative_to(run.root)) for p in run.root.rglob("*"))
    holder = subprocess.Popen(  # another process holds the folder, as a run into it does
        [
            sys.executable,
            "-c",
            f"import fcntl, sys, time; h = open({str(run.root / MANIFEST)!r}, 'rb'); "
            "fcntl.flock(h, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=r"--out .* is in use by another qualcl run .* choose another --out"):
            run_recipe(COMCL, config, run.root)
        assert sorted(str(p.relative_to(run.root)) for p in run.root.rglob("*")) == before
    finally:
        holder.kill()
        holder.wait()
    with run.exclusive():  # the holder is gone (a killed process leaves no stale lock)
        with pytest.raises(ValueError, match="in use by another qualcl run"), RunFolder(run.root).exclusive():
            pass  # a second hold, even from this process, is refused while the first lasts
    with RunFolder(run.root).exclusive(), RunFolder(run.root, writable=False).exclusive():
        pass  # released after its block; read-only folders (DDP ranks > 0) hold nothing
