"""Every recipe, every training stage: interrupted by SIGINT or SIGTERM at any point, a run resumes exactly.

One parametrised test over every recipe of ``qualcl run``. A plan of interruptions walks through each
training stage of the run: before a step, inside a step (the loss back-propagated, the parameters not
yet updated), at an epoch's end and during validation (where the stage validates), alternating
SIGINT (Ctrl-C) and SIGTERM, and once a second Ctrl-C inside a step (which stops at once). After each
interruption the same run is started again; at the end its histories, weights and test metrics must
equal those of the uninterrupted run bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from qualcl.recipes import RECIPES

POINTS = ("before-a-step", "inside-a-step", "epoch-end", "during-validation")
OPTIONS = ["trainer.logger=none", "trainer.progress=false"]
#: Recipes that are not bit-reproducible even uninterrupted: torchvision's Faster R-CNN on the CPU (its ROI
#: align backward accumulates in parallel, so two uninterrupted runs already differ in the last digits, and
#: proposal sampling amplifies that). Their resumed run must finish with every history row, not the same bits.
NOT_BITWISE = {"comcl-detector"}
#: Longer stages where the smoke preset's are too short to reach every point (an epoch's end, a validation).
LONGER = {"comcl": ["finetune.epochs=2"], "comcl-detector": ["steps=8"]}


def _stage(trainer: L.Trainer) -> str:
    return Path(trainer.checkpoint_callback.dirpath).name  # type: ignore[union-attr]


class _Plan(Callback):
    """Sends this process one signal at a due point of the stage being trained, then waits for the rerun.

    Each training stage owes every point of :data:`POINTS` (during-validation only if it validates) and
    pays each at the first chance, one per attempt; on an epoch's last batch the epoch-end and validation
    points go first (a stop there ends a short stage's only epoch). The signals alternate SIGINT and
    SIGTERM; the run's first inside-a-step point sends two SIGINTs (a second Ctrl-C: stop at once).
    """

    def __init__(self) -> None:
        self.fired: list[tuple[str, str, int]] = []
        self.pending: dict[str, list[str]] = {}
        self.double_sent = False
        self.waiting = False  # a signal was sent in this attempt: nothing more until the rerun
        self.validating: set[str] = set()  # the stages that validate

    def _maybe(self, trainer: L.Trainer, point: str) -> None:
        due = self.pending.setdefault(_stage(trainer), list(POINTS))
        if self.waiting or point not in due:
            return
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if point in POINTS[:2] and last and {"epoch-end", "during-validation"} & set(due):
            return
        due.remove(point)
        self.waiting = True
        sent = [signum for *_, signum in self.fired]
        signum = signal.SIGTERM if sent.count(signal.SIGINT) > sent.count(signal.SIGTERM) else signal.SIGINT
        times = 1
        if point == "inside-a-step" and not self.double_sent:
            signum, times, self.double_sent = signal.SIGINT, 2, True
        self.fired.append((_stage(trainer), point, signum if times == 1 else -signum))
        for _ in range(times):
            os.kill(os.getpid(), signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = self.pending.setdefault(_stage(trainer), list(POINTS))
        if trainer.val_dataloaders is None and "during-validation" in due:  # a stage without validation
            due.remove("during-validation")
        elif trainer.val_dataloaders is not None:
            self.validating.add(_stage(trainer))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._maybe(trainer, "before-a-step")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self._maybe(trainer, "inside-a-step")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        stage = _stage(trainer)  # a validating stage's last batch: its validation goes first
        validation_due = stage in self.validating and "during-validation" in self.pending.get(stage, ())
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and not validation_due:
            self._maybe(trainer, "epoch-end")

    def on_validation_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.state.fn == "fit":
            self._maybe(trainer, "during-validation")


def _numbers(value: Any) -> Any:
    """``metrics.json`` without the wall-clock fields and the weights' path (it names the run folder)."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items() if k not in ("seconds", "stages", "weights")}
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _same_run(whole: Path, resumed: Path) -> None:
    left, right = (json.loads((p / "metrics.json").read_text()) for p in (whole, resumed))
    assert _numbers(left) == _numbers(right)
    for weights in sorted(p.name for p in (whole / "weights").iterdir()):
        if not weights.endswith(".safetensors"):  # a tokenizer's vocabulary, say
            assert (whole / "weights" / weights).read_bytes() == (resumed / "weights" / weights).read_bytes()
            continue
        a, b = load_file(str(whole / "weights" / weights)), load_file(str(resumed / "weights" / weights))
        assert a.keys() == b.keys(), weights
        assert all(torch.equal(a[k], b[k]) for k in a), (weights, [k for k in a if not torch.equal(a[k], b[k])][:5])
    for history in sorted(p.name for p in (whole / "history").iterdir()):
        assert (whole / "history" / history).read_text() == (resumed / "history" / history).read_text(), history


#: A smoke run folder holds results, not inputs: under 25 MB (the detector's smoke preset narrows
#: torchvision's 51 MB box head: ``box_head_width``).
FOLDER_LIMIT: dict[str, float] = {}


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_resumes_exactly_after_signals_at_every_point_of_every_stage(name, tmp_path):
    """Also: its smoke run folder is small (results, not inputs)."""
    recipe = RECIPES[name].load()
    spec = RECIPES[name].load_spec()
    config = spec.config("smoke", overrides=[*OPTIONS, *LONGER.get(name, []), f"data.data_dir={tmp_path / 'data'}"])
    recipe.run(config, tmp_path / "whole")
    size = sum(f.stat().st_size for f in (tmp_path / "whole").rglob("*") if f.is_file())
    assert size < FOLDER_LIMIT.get(name, 25e6), f"a smoke run folder of {size / 1e6:.1f} MB"
    plan = _Plan()
    codes = []
    while len(codes) < 60:
        before = signal.getsignal(signal.SIGINT)
        plan.waiting = False
        try:
            recipe.run(config, tmp_path / "resumed", callbacks=[plan])
        except SystemExit as stopped:
            codes.append(stopped.code)
        else:
            break
        finally:
            assert signal.getsignal(signal.SIGINT) is before  # the run's handler is gone, the previous one back
    assert codes == [128 + abs(sent) for *_, sent in plan.fired]  # 130 after Ctrl-C, 143 after SIGTERM
    assert not list((tmp_path / "resumed").rglob("last-v*.ckpt"))
    assert plan.pending, "no training stage ran"
    fired = {point for _, point, _ in plan.fired}
    for stage in plan.pending:  # every stage was interrupted, the recipe at every kind of point
        assert any(s == stage for s, _, _ in plan.fired), stage
    assert fired >= set(POINTS) - (set() if plan.validating else {"during-validation"}), plan.fired
    assert {abs(sent) for *_, sent in plan.fired} == {signal.SIGINT, signal.SIGTERM}, plan.fired
    assert any(sent < 0 for *_, sent in plan.fired)  # the second Ctrl-C was tried
    if name in NOT_BITWISE:
        for history in (tmp_path / "whole" / "history").iterdir():
            rows = [line.split(",")[0] for line in history.read_text().splitlines()]
            assert rows == [
                line.split(",")[0]
                for line in (tmp_path / "resumed" / "history" / history.name).read_text().splitlines()
            ]
        return
    _same_run(tmp_path / "whole", tmp_path / "resumed")
