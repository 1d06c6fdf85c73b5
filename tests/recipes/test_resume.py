"""Interrupted anywhere, a run resumes to the result of the uninterrupted run; run folders are never misused."""

import json
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from qualcl.recipes.comcl import COMCL
from qualcl.recipes.comcl.modules import ContrastivePretraining, GradingFineTuning
from qualcl.recipes.config import config_to_dict
from qualcl.recipes.mkcnet import MKCNET
from qualcl.recipes.run_folder import MANIFEST, prepare_run_folder

COMCL_OPTIONS = ["pretrain.steps=7", "finetune.epochs=3", "trainer.logger=none"]


class _StopAt(Callback):
    """Raises at the start of a chosen batch of a chosen stage (the module's type), once."""

    def __init__(self, kind: type, *, step: int | None = None, epoch: int | None = None, batch: int | None = None):
        self.kind, self.step, self.epoch, self.batch = kind, step, epoch, batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        if not isinstance(pl_module, self.kind):
            return
        if self.step is not None and trainer.global_step == self.step:
            raise KeyError("stop")
        if self.epoch is not None and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise KeyError("stop")


def _same_run(a, b) -> None:
    assert json.loads((a / "metrics.json").read_text())["test"] == json.loads((b / "metrics.json").read_text())["test"]
    for weights in sorted(p.name for p in (a / "weights").iterdir()):
        left, right = load_file(str(a / "weights" / weights)), load_file(str(b / "weights" / weights))
        assert all(torch.equal(left[k], right[k]) for k in left), weights
    for history in sorted(p.name for p in (a / "history").iterdir()):
        assert (a / "history" / history).read_text() == (b / "history" / history).read_text(), history


@pytest.fixture(scope="module")
def comcl_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("comcl")
    config = COMCL.config("smoke", overrides=[*COMCL_OPTIONS, f"data.data_dir={root / 'data'}"])
    COMCL.run(config, root / "whole")
    return config, root


def test_comcl_resumes_exactly_after_interruptions_in_each_stage(comcl_reference):
    config, root = comcl_reference
    run = root / "interrupted"
    with pytest.raises(KeyError):  # pre-training, in the middle of its second epoch
        COMCL.run(config, run, callbacks=[_StopAt(ContrastivePretraining, step=4)])
    with pytest.raises(KeyError):  # fine-tuning, second batch of its second epoch
        COMCL.run(config, run, callbacks=[_StopAt(GradingFineTuning, epoch=1, batch=1)])
    COMCL.run(config, run)
    _same_run(root / "whole", run)


class _SignalAt(Callback):
    """Sends this process a signal once, from a chosen hook of the fine-tuning stage in epoch 1."""

    def __init__(self, signum: int, hook: str, batch: int | None = None, *, times: int = 1) -> None:
        self.signum, self.hook, self.batch, self.sent, self.times = signum, hook, batch, False, times

    def _maybe(self, trainer, pl_module, hook: str, batch_idx: int | None = None) -> None:
        if self.sent or hook != self.hook or not isinstance(pl_module, GradingFineTuning):
            return
        if trainer.current_epoch == 1 and (self.batch is None or batch_idx == self.batch):
            self.sent = True
            for _ in range(self.times):  # a second Ctrl-C stops the stage at once (KeyboardInterrupt)
                os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe(trainer, pl_module, "train_batch_start", batch_idx)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # inside a step: the loss is computed and back-propagated, the parameters not yet updated
        self._maybe(trainer, pl_module, "before_optimizer_step", trainer.fit_loop.epoch_loop.batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe(trainer, pl_module, "train_batch_end", batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._maybe(trainer, pl_module, "validation_batch_start", batch_idx)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._maybe(trainer, pl_module, "validation_epoch_end")


POINTS = {
    "before-a-step": ("train_batch_start", 1),
    "inside-a-step": ("before_optimizer_step", 1),
    "mid-epoch": ("train_batch_end", 0),
    "epoch-end": ("train_batch_end", 1),
    "mid-validation": ("validation_batch_start", 0),
    "after-validation": ("validation_epoch_end", None),
}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", list(POINTS))
def test_a_signal_anywhere_in_an_epoch_resumes_to_the_same_run(comcl_reference, tmp_path, point, signum):
    # the epoch's history row is produced after validation, when the checkpoint may or may not hold it
    config, root = comcl_reference
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        COMCL.run(config, tmp_path / "run", callbacks=[_SignalAt(signum, *POINTS[point])])
    assert stopped.value.code == 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM
    assert signal.getsignal(signal.SIGINT) is before  # the run's handler is gone, the previous one back
    assert not list((tmp_path / "run" / "checkpoints").rglob("last-v*.ckpt"))  # no stray checkpoint copies
    COMCL.run(config, tmp_path / "run")
    _same_run(root / "whole", tmp_path / "run")


def test_sigterm_exits_non_zero_and_the_rerun_finishes_the_same_run(comcl_reference, tmp_path):
    _, root = comcl_reference
    command = [sys.executable, "-m", "qualcl.cli", "run", "comcl", "--preset", "smoke", "--out", str(tmp_path / "run")]
    command += [item for option in COMCL_OPTIONS for item in ("--set", option)]
    command += ["--set", f"data.data_dir={root / 'data'}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = tmp_path / "run" / "history" / "finetune.csv"
    deadline = time.monotonic() + 300
    while not history.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # fine-tuning has finished its first epoch
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "run the same command again to resume" in stderr
    assert "weights_only" not in stderr  # the stop's checkpoint is saved without Lightning's notice
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert "finetune" not in stages and not (tmp_path / "run" / "metrics.json").exists()
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]
    _same_run(root / "whole", tmp_path / "run")


def test_mkcnet_resumes_exactly_in_the_meta_learner_pass(tmp_path):
    config = MKCNET.config("smoke", overrides=["trainer.logger=none", f"data.data_dir={tmp_path / 'data'}"])
    MKCNET.run(config, tmp_path / "whole")

    class InMetaPass(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.current_epoch == 1 and int(batch[4][0]) == 1 and batch_idx == 8:
                raise KeyError("stop")

    with pytest.raises(KeyError):
        MKCNET.run(config, tmp_path / "interrupted", callbacks=[InMetaPass()])
    MKCNET.run(config, tmp_path / "interrupted")
    _same_run(tmp_path / "whole", tmp_path / "interrupted")


@pytest.mark.parametrize("batch_size", [3, None], ids=["batched", "items-are-batches"])
def test_resumable_loader_skips_the_applied_batches_once(batch_size):
    from torch.utils.data import DataLoader

    from qualcl.recipes.resume import ResumableLoader

    data = [torch.tensor([i]) for i in range(9)] if batch_size is None else torch.arange(9)
    loader = ResumableLoader(DataLoader(data, batch_size=batch_size), lambda: (0, 0))
    whole = [b.tolist() for b in loader]
    loader.load_state_dict({"epoch": 0, "done": 2})
    assert [b.tolist() for b in loader] == whole[2:]
    assert [b.tolist() for b in loader] == whole  # the skip applies to one iteration only
    loader.load_state_dict({"epoch": 0, "done": len(whole)})  # a finished epoch skips nothing
    assert [b.tolist() for b in loader] == whole


def test_run_folders_are_never_misused(tmp_path):
    config = COMCL.config("smoke")
    base = config_dict = config_to_dict(config)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        prepare_run_folder(tmp_path / "file", base)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own\n")  # the user's file, no qualcl run folder
    with pytest.raises(ValueError, match="holds files qualcl did not write"):
        COMCL.run(config, mine)
    assert (mine / "config.yaml").read_text() == "my: own\n"  # untouched
    prepare_run_folder(tmp_path / "new" / "deeper", base)  # new folders are fine
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("# qualcl run config (comcl)\n" + yaml.safe_dump(base))
    (run / "weights").mkdir()
    (run / "data").mkdir()
    (run / "data" / "keep.txt").write_text("generated data")
    prepare_run_folder(run, base)  # the same config resumes
    progress_off = {**config_dict, "trainer": {**config_dict["trainer"], "progress": True, "logger": "none"}}
    prepare_run_folder(run, progress_off)  # progress and logger may change
    other = {**config_dict, "seed": 3, "pretrain": {**config_dict["pretrain"], "temperature": 0.5}}
    with pytest.raises(ValueError, match=r"another config \(pretrain.temperature: 0.07 → 0.5; seed: 0 → 3\)"):
        prepare_run_folder(run, other)
    with pytest.raises(ValueError, match="no .qualcl-run.json"):  # not marked by qualcl: nothing deleted
        prepare_run_folder(run, other, overwrite=True)
    assert (run / "weights").is_dir()
    (run / MANIFEST).write_text("{}")
    prepare_run_folder(run, other, overwrite=True)
    assert not (run / "config.yaml").exists() and not (run / "weights").exists()
    assert (run / "data" / "keep.txt").read_text() == "generated data"


def test_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: path != locked and real_access(path, mode))
    with pytest.raises(ValueError, match="is not writable"):
        prepare_run_folder(locked / "run", {})
    prepare_run_folder(tmp_path / "open" / "run", {})


@pytest.mark.parametrize("point", ["before-a-step", "inside-a-step", "epoch-end", "mid-validation"])
def test_a_second_ctrl_c_stops_at_once_and_still_resumes_to_the_same_run(comcl_reference, tmp_path, point):
    # nothing is saved inside a step (BoundaryCheckpoint): the stage resumes from its last boundary checkpoint
    config, root = comcl_reference
    with pytest.raises(SystemExit) as stopped:
        COMCL.run(config, tmp_path / "run", callbacks=[_SignalAt(signal.SIGINT, *POINTS[point], times=2)])
    assert stopped.value.code == 128 + signal.SIGINT
    COMCL.run(config, tmp_path / "run")
    _same_run(root / "whole", tmp_path / "run")
