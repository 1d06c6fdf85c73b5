"""Every recipe runs as written with ``--accelerator cpu --devices 2 --strategy ddp`` (2 gloo processes).

Lightning launches the second process by re-running the command, so the runs go through the real
``qualcl`` command line. The run folder must have the layout of a one-process run, written once.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

RECIPES = {
    "comcl": ["--set", "pretrain.steps=2", "--set", "data.num_images=32"],
    "mkcnet": ["--set", "train.epochs=1", "--set", "data.num_images=40"],
    "comcl-detector": ["--set", "data.num_images=8"],
}


def _qualcl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = shutil.which("qualcl") or f"{sys.executable} -m qualcl.cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*script.split(), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env, check=False
    )


def _why(result: subprocess.CompletedProcess[str]) -> str:
    """A failed run's one-line errors (a rank's ``qualcl: error: ...``), its first traceback (the root cause; later
    ones are the other rank's echo) and the end."""
    err, first = result.stderr, result.stderr.find("Traceback")
    errors = "\n".join(line for line in err.splitlines() if "qualcl: error:" in line)
    return errors + "\n...\n" + (err[first : first + 3000] + "\n...\n" + err[-1500:] if first >= 0 else err[-3000:])


def _layout(root: Path) -> set[str]:
    """Files of a run folder, without Lightning's own logs and checkpoint versions."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.parts[len(root.parts)] not in ("logs", "data")
    }


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_two_process_ddp_run_writes_the_layout_of_one_process(recipe, tmp_path):
    options = ["--preset", "smoke", "--accelerator", "cpu", *RECIPES[recipe]]
    single = _qualcl("run", recipe, *options, "--out", "single", cwd=tmp_path)
    assert single.returncode == 0, _why(single)
    ddp = _qualcl("run", recipe, *options, "--devices", "2", "--strategy", "ddp", "--out", "ddp", cwd=tmp_path)
    assert ddp.returncode == 0, _why(ddp)
    assert _layout(tmp_path / "ddp") == _layout(tmp_path / "single")
    config = (tmp_path / "ddp" / "config.yaml").read_text()
    assert "devices: 2" in config and "strategy: ddp" in config
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single_metrics = json.loads((tmp_path / "single" / "metrics.json").read_text())
    # predictions are gathered from both ranks: the test set is counted once, whole
    assert metrics.get("data") == single_metrics.get("data")
    if recipe != "comcl-detector":
        test = metrics["test"].get("original", metrics["test"])
        assert test["overall"]["n"] == metrics["data"]["test_images"]


def test_torchrun_launches_a_recipe_as_written(tmp_path):
    """Under torchrun the ranks come from the launcher (Lightning's TorchElastic environment)."""
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on the PATH")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    command = [torchrun, "--nproc_per_node", "2", "--master_port", port, "-m", "qualcl.cli", "run", "comcl"]
    options = ["--preset", "smoke", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", *RECIPES["comcl"]]
    result = subprocess.run(
        [*command, *options, "--out", "run"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, _why(result)
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "MODEL_CARD.md").is_file()
    assert result.stdout.count("everything else:") == 1  # one summary, from global rank 0
