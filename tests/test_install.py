"""The core install: a built wheel, installed without the recipe extras, gives the primitives."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
#: What only the extras bring (recipes: Lightning, YAML configs, plots, spreadsheets; text: the text towers).
EXTRAS = ("lightning", "pytorch_lightning", "matplotlib", "openpyxl", "open_clip", "transformers")
CHECK = f"""
import importlib, importlib.util
import qualcl
for extra in {EXTRAS!r}:
    assert importlib.util.find_spec(extra) is None, extra + " is visible"
assert "site-packages" in qualcl.__file__ and "src" not in qualcl.__file__.split("site-packages")[1], qualcl.__file__
import torch
from qualcl.losses import InfoNCE, MultiLevelInfoNCE, ClipLoss
for module in ("qualcl.kernels", "qualcl.heads", "qualcl.models", "qualcl.samplers", "qualcl.metrics",
               "qualcl.functional", "qualcl.optim", "qualcl.evaluation"):
    importlib.import_module(module)
z1, z2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
InfoNCE(temperature=0.1)(z1, z2).backward()
print("core install ok")
"""


@pytest.mark.slow
def test_the_wheel_installs_and_its_primitives_work_without_the_recipe_extras(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("qualcl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [line for line in archive.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
        assert any(name.endswith("py.typed") for name in archive.namelist())
    core = {
        re.split(r"[<>=!~; \[]", line.split(":", 1)[1].strip())[0].lower().replace("-", "_")
        for line in requires
        if "extra ==" not in line
    }
    assert {"torch", "timm", "torchmetrics"} <= core and not core & set(EXTRAS), core
    # a fresh environment with the machine's packages (torch, as a user's project would have it) except this
    # checkout and the extras: their top-level entries are left out of the link farm it sees
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    farm = tmp_path / "core-site"
    farm.mkdir()
    site = Path(torch.__file__).parents[1]
    extras = re.compile(rf"^({'|'.join(EXTRAS)}|open_clip_torch|qualcl)(-\d.*|\.py)?$|^__editable__|\.pth$", re.I)
    for entry in site.iterdir():
        if extras.match(entry.name):
            continue
        (farm / entry.name).symlink_to(entry)
    (next((env / "lib").glob("python*")) / "site-packages" / "core.pth").write_text(str(farm) + "\n")
    python = env / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the venv's own paths
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        env=clean,
    )
    done = subprocess.run([str(python), "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, env=clean)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "core install ok" in done.stdout
