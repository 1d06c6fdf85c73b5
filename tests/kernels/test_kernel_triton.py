"""Triton kernels: the CPU interpreter (values, gradients), an offline sm_90 compile, and CUDA when there is one.

``TRITON_INTERPRET=1`` must be set before triton is imported, and other tests import triton
normally, so both checks run in fresh subprocesses.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qualcl.kernels import triton_available

HERE = Path(__file__).parent
pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def _only_when_selected(request: pytest.FixtureRequest) -> None:
    """The slow variants (minutes with a cold triton cache) run only under ``-m slow``."""
    expression = request.config.getoption("markexpr") or ""
    if "slow" not in expression or "not slow" in expression:
        pytest.skip("slow variant: run with -m slow")


def _run(script: str, *args: str, interpret: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    src = str(HERE.parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else src
    return subprocess.run(
        [sys.executable, str(HERE / script), *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_triton_kernels_in_the_interpreter():
    result = _run("triton_checks.py", "fast", interpret=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_triton_kernels_in_the_interpreter_random_sweep(request):
    _only_when_selected(request)
    result = _run("triton_checks.py", "slow", interpret=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it)")
def test_triton_kernels_on_cuda():
    """The same checks on the GPU, bf16 included (the interpreter cannot check bf16)."""
    result = _run("triton_checks.py", "all", "--cuda", interpret=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_triton_kernels_compile_for_h100():
    result = _run("triton_compile.py", interpret=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_triton_kernels_compile_for_h100_every_variant(request):
    _only_when_selected(request)
    result = _run("triton_compile.py", "--all", interpret=False)
    assert result.returncode == 0, result.stdout + result.stderr
