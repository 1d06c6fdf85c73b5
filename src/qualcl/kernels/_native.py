"""The compiled CPU selection kernel: exact per-row top-k of a float32 score block, built on first use.

``torch.topk`` and the group-maxima screen of :func:`qualcl.kernels._topk_torch.block_topk` each
pass over a score block several times and launch a dozen small ops per block; on the K = 64 miner
(8,192 × 8,192 scores) that selection costs about 40 % of the matmul that made the scores. The C
kernel in ``_topk_native.c`` selects each row in one read of it (a max pass over 16-column groups, a
histogram bound on the k-th group maximum, a branch-free gather of the ~k candidates and a rank of
every pair of keys), in torch's own OpenMP threads, while the block is still in cache.

It is compiled once per machine with the system C compiler (``$CC``, else ``cc``, ``gcc``) into
qualcl's cache folder (``$QUALCL_CACHE/native``, :func:`qualcl._cache.cache_dir`), keyed by the
source, the compiler, the flags and the CPU (``-march=native``: a cache shared by different
machines keeps one build per CPU). Without a compiler, on a failed build (one warning) or with
``QUALCL_NATIVE=0`` the callers keep their torch path, which returns the same result.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from qualcl._cache import cache_dir
from qualcl._locks import file_lock

__all__ = ["NATIVE_ENV", "native_available", "native_topk_rows"]

NATIVE_ENV = "QUALCL_NATIVE"
"""Set to ``0`` to never build or use the compiled kernel (the torch path runs instead)."""
SOURCE = Path(__file__).with_name("_topk_native.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11")
MAX_WIDTH = (1 << 31) - 1
"""Columns are ranked through 32-bit keys."""

_build_lock = threading.Lock()


def _compiler() -> str | None:
    name = os.environ.get("CC")
    if name:
        return shutil.which(name)
    return shutil.which("cc") or shutil.which("gcc")


def _cpu_identity() -> str:
    """The CPU model and feature flags (what ``-march=native`` compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(lines))


def _library_path(compiler: str) -> Path:
    """The build's file, named by a hash of the source, the compiler, the flags and the CPU.

    The compiler is identified by its resolved path, size and modification time (no process started).
    """
    real = os.path.realpath(compiler)
    stat = os.stat(real)
    digest = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        f"{real} {stat.st_size} {stat.st_mtime_ns}".encode(),
        " ".join(FLAGS).encode(),
        _cpu_identity().encode(),
    ):
        digest.update(part)
        digest.update(b"\0")
    return cache_dir() / "native" / f"topk-{digest.hexdigest()[:20]}.so"


def _build(compiler: str, path: Path) -> None:
    """Compile the kernel into ``path`` (another process may be doing the same: a lock, then an atomic rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            return
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(partial)], capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"{compiler} exited with {result.returncode}: {result.stderr.strip()[-2000:]}")
        os.replace(partial, path)


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The loaded kernel, built first if needed; ``None`` where it cannot be (see the module docstring)."""
    if os.environ.get(NATIVE_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    try:
        with _build_lock:
            path = _library_path(compiler)
            if not path.exists():
                _build(compiler, path)
        library = ctypes.CDLL(str(path))  # after torch: its libgomp is the OpenMP runtime the kernel binds to
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"qualcl: the compiled top-k selection kernel is unavailable ({error}); the torch path runs instead "
            f"(same results, slower on CPU). Set {NATIVE_ENV}=0 to skip the build.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    function = library.qualcl_topk_rows
    function.restype = None
    function.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    return library


def native_available(x: Tensor) -> bool:
    """Whether :func:`native_topk_rows` runs for score blocks like ``x`` (float32 on the CPU, kernel built)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and _library() is not None


def native_topk_rows(scores: Tensor, k: int, values: Tensor, columns: Tensor) -> None:
    """The ``k`` largest entries of each row of ``scores``, by value (descending) then column (ascending).

    Equal to the first ``k`` columns of a stable descending sort of each row, with NaN ranked above
    every number (as ``torch.sort`` ranks it) and ``-0.0`` equal to ``0.0``. Only call after
    :func:`native_available`.

    Args:
        scores: ``(R, W)`` float32 on the CPU, rows contiguous (``stride(1) == 1``), ``k <= W < 2^31``.
        k: ``>= 1``.
        values: ``(R, k)`` contiguous float32, written.
        columns: ``(R, k)`` contiguous int64, written.
    """
    rows, width = scores.shape
    if scores.dtype != torch.float32 or values.dtype != torch.float32 or columns.dtype != torch.int64:
        raise ValueError("scores and values must be float32 and columns int64")
    if scores.stride(1) != 1 or not 1 <= k <= width <= MAX_WIDTH:
        raise ValueError(f"scores must have unit column stride and 1 <= k <= width < 2^31, got {scores.shape}, {k=}")
    shapes = values.shape == (rows, k) and columns.shape == (rows, k)
    if not (shapes and values.is_contiguous() and columns.is_contiguous()):
        raise ValueError(f"values and columns must be contiguous ({rows}, {k}) tensors")
    library = _library()
    assert library is not None
    library.qualcl_topk_rows(
        scores.data_ptr(),
        rows,
        width,
        scores.stride(0),
        k,
        values.data_ptr(),
        columns.data_ptr(),
        torch.get_num_threads(),
    )
