"""Every benchmark script still runs against the library: each at tiny sizes, its table checked, no time judged.

Benchmarks measure and these tests only assert, so that an API change that breaks a script fails here rather
than the next time someone measures: each script runs its cases end to end at the smallest sizes it takes and
writes its table (under ``tmp_path``; ``benchmarks/results`` must stay as it is). Scripts that run each case in
a fresh process (so that its peak memory is its own) run those children in this process instead: the command
line a script builds is still parsed by its own ``main``, which is what an API change would break; the numbers
are not looked at.
"""

import contextlib
import importlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"


def _snapshot() -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(RESULTS)): (p.stat().st_size, p.stat().st_mtime_ns) for p in RESULTS.rglob("*")}


@pytest.fixture(autouse=True)
def _leave_results_and_threads_alone():
    """A script must write under tmp_path only; it runs on one thread (tiny sizes), and this process's is restored."""
    before, threads = _snapshot(), torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    assert _snapshot() == before, "a benchmark wrote into benchmarks/results"


@pytest.fixture
def in_process(monkeypatch):
    """``subprocess.run`` of ``python -m benchmarks.X ARGS`` calls ``benchmarks.X.main(ARGS)`` here (``-c CODE``
    executes CODE), its standard output captured; any other command runs as usual. A child that fails raises
    here, with its traceback, instead of becoming a "failed" cell of the table."""
    real = subprocess.run

    def run(command, *args, **kwargs):
        argv = [str(part) for part in command] if isinstance(command, (list, tuple)) else []
        if argv[:2] == [sys.executable, "-m"] and argv[2].startswith("benchmarks."):
            module = importlib.import_module(argv[2])

            def call() -> object:
                return module.main(argv[3:])

        elif argv[:2] == [sys.executable, "-c"]:

            def call() -> object:
                exec(argv[2], {"__name__": "__main__"})
                return None

        else:
            return real(command, *args, **kwargs)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            call()
        return subprocess.CompletedProcess(argv, 0, out.getvalue(), "")

    monkeypatch.setattr(subprocess, "run", run)


def _script(name: str, *needs: str) -> ModuleType:
    for package in needs:
        pytest.importorskip(package)
    return importlib.import_module(f"benchmarks.{name}")


RECIPES = ("lightning", "yaml")
"""The ``recipes`` extra, which scripts that build a recipe's modules or data need."""
PEERS = ("open_clip", "pytorch_metric_learning")
"""Packages of peers the kernel comparison runs when they are installed."""


def _missing(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:
        return True
    return False


def _rows(text: str, heading: str | None = None) -> list[list[str]]:
    """The cells of the body rows of a markdown table (of the first table after ``heading``, if given)."""
    lines = text.splitlines()
    if heading is not None:
        lines = lines[next(i for i, line in enumerate(lines) if line.startswith(heading)) :]
    start = next(i for i, line in enumerate(lines) if line.startswith("|")) + 2  # header and separator
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


# --- one function per script: run it at tiny sizes, check its table ------------------------------------------


def cli_latency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script("cli_latency")
    commands = ["qualcl --help", "qualcl run comcl --preset smoek (bad preset)"]  # all are timed alike: two suffice
    monkeypatch.setattr(script, "COMMANDS", {label: script.COMMANDS[label] for label in commands})
    script.main(["--repeat", "1", "--out", str(tmp_path)])
    rows = _rows((tmp_path / "cli_latency_cpu.md").read_text())
    assert [row[0] for row in rows] == [f"`{label}`" for label in commands]
    assert set(json.loads((tmp_path / "cli_latency_cpu.json").read_text())["rows"]) == set(commands)


def compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script("compare")
    from benchmarks.cases import GROUP_BY_KEY, GROUPS, Shape

    # _free (gc.collect, between groups) returns a full-size group's inputs; here it would only cost time
    monkeypatch.setattr(script, "_free", lambda device: None)
    command = ["--size", "96", "--threads", "1", "--repeats", "1", "--warmup", "1", "--budget", "0", "--no-memory"]
    script.main([*command, "--out", str(tmp_path)])
    text = (tmp_path / "cpu-quick.md").read_text()
    raw = json.loads((tmp_path / "cpu-quick.json").read_text())["results"]
    assert list(raw) == [group.key for group in GROUPS]
    for group in GROUPS:
        rows = _rows(text, f"### {group.title}")
        cases = [case for case in group.cases if "cpu" in case.devices]
        assert len(rows) == len(cases), group.key
        for case in cases:
            measured = raw[group.key][case.name]
            if measured["error"] is not None:  # only a peer that is not installed may be missing
                assert any(peer in measured["error"] and _missing(peer) for peer in PEERS), (group.key, case.name)
            else:
                assert len(measured["times"]) >= 3, (group.key, case.name)
    assert "## Targets" in text
    # the peak memory of a case, measured by a child process (here, in this one): once, at a small size
    group = GROUP_BY_KEY["info_nce"]
    assert isinstance(script.memory_cpu(group, group.cases[1], Shape(64, 64, 32), threads=1), int)


def first_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script("first_call")
    script.main(["--runs", "1", "--out", str(tmp_path / "first_call.md")])
    rows = _rows((tmp_path / "first_call.md").read_text())
    assert [row[0] for row in rows] == list(script.CASES)


def image_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script("image_text", *RECIPES)
    size = ["--image-size", "32", "--batch", "2", "--repeats", "1", "--threads", "1", "--vocab", "150,300"]
    script.main([*size, "--out", str(tmp_path)])
    rows = _rows((tmp_path / "image_text_cpu.md").read_text())
    assert len(rows) == 7 and not [row for row in rows if row[1] == "failed"]
    assert all(json.loads((tmp_path / "image_text_cpu.json").read_text()).values())


def meta_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script("meta_step", *RECIPES)
    tiny = ["--size", "32", "--batch", "2", "--repeats", "1", "--threads", "1", "--backbones", "resnet10"]
    script.main([*tiny, "--out", str(tmp_path)])
    rows = _rows((tmp_path / "meta_step_cpu.md").read_text())
    passes = ["Task Net pass", *(f"Meta Learner pass ({mode})" for mode in script.MODES)]
    assert [row[0] for row in rows] == [f"resnet10 {p}" for p in passes]


def mkcnet_decisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script("mkcnet_decisions", *RECIPES)
    from qualcl.recipes.mkcnet import mkcnet_config, run_mkcnet

    run_mkcnet(mkcnet_config("smoke", overrides=["train.epochs=1"]), tmp_path / "run")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        script.main([str(tmp_path / "run")])
    decisions = json.loads(out.getvalue())
    assert decisions["run"] == str(tmp_path / "run")
    assert len(decisions["predicted_share_val_fitted"]) == len(decisions["true_share"]) == 3


def patch_discrimination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script("patch_discrimination")
    script.main(["--batches", "1", "--repeats", "1", "--threads", "1", "--out", str(tmp_path / "pd.md")])
    rows = _rows((tmp_path / "pd.md").read_text())
    assert [row[2] for row in rows] == list(script.CASES) and not [row for row in rows if row[3] == "failed"]


def retrieval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script("retrieval", "faiss", "pytorch_metric_learning")
    monkeypatch.setattr(script, "MEMORY_MAPPED_ROWS", 200)  # the second shape takes the memory-mapped path
    mapped: list[tuple[str, object]] = []
    open_memmap = np.lib.format.open_memmap

    def spy(*args, **kwargs):
        mapped.append((kwargs.get("mode", "r+"), kwargs.get("shape")))  # np.load(mmap_mode=...) opens it too
        return open_memmap(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "open_memmap", spy)
    sizes = ["--sizes", "64", "--search", "10x150,10x300", "--repeats", "1", "--search-repeats", "1", "--threads", "1"]
    script.main([*sizes, "--results", str(tmp_path)])
    text = (tmp_path / "retrieval_cpu.md").read_text()
    circle = _rows(text, "## Circle loss")
    assert [row[0] for row in circle] == ["64"] and "failed" not in " ".join(circle[0])
    search = _rows(text, "## Exact search")
    assert [row[1] for row in search] == 2 * list(script.SEARCH_METHODS.values())
    shapes = [row[0] for row in search if row[1] == script.SEARCH_METHODS["qualcl"]]
    assert shapes == ["10 × 150", "10 × 300 (memory-mapped)"]
    assert {row[7] for row in search} == {"1.0000", "—"}  # every method that returns indices found topk's
    assert mapped == [("w+", (300, 512)), ("r+", None)]  # only the large database, written then mapped


def siglip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script("siglip", "open_clip")
    script.main(["--batch", "64", "--dim", "32", "--rounds", "1", "--threads", "1", "--out", str(tmp_path / "s.md")])
    rows = _rows((tmp_path / "s.md").read_text(), "| threads")
    assert [row[1] for row in rows] == list(script.CASES)


def siglip_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the Triton kernel against the dense path; without CUDA the CPU check the script documents."""
    cuda = torch.cuda.is_available()
    script = _script("siglip_gpu", *(["triton"] if cuda else []))
    device = ["--device", "cuda", "--batch", "1024"] if cuda else ["--device", "cpu", "--batch", "64"]
    script.main([*device, "--dim", "32", "--repeats", "1", "--out", str(tmp_path / "s.md")])
    rows = _rows((tmp_path / "s.md").read_text())
    assert [row[0] for row in rows] == (["triton", "naive"] if cuda else ["torch", "naive"])
    assert "OOM" not in (tmp_path / "s.md").read_text()


def step_overhead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script("step_overhead", *RECIPES)
    tiny = ["--steps", "1", "--warmup", "1", "--per-level", "1", "--batch", "2", "--image-size", "32"]
    assert script.main([*tiny, "--threads", "1", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "step_overhead_cpu_quick.md").read_text()
    steps = ["pre-training (4 patch pairs of 24 px)", "fine-tuning (2 images of 32 px)"]
    assert [row[0] for row in _rows(text)] == steps
    assert len(_rows(text, "## CPU settings")) == 4


def vit_grading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script("vit_grading", *RECIPES)
    table = tmp_path / "vit.md"
    script.main(["--preset", "smoke", "--epochs", "1", "--threads", "1", "--out", str(table)])
    assert [row[0] for row in _rows(table.read_text())] == list(script.CASES)


SCRIPTS: dict[str, Callable[[Path, pytest.MonkeyPatch], None]] = {
    f.__name__: f
    for f in (
        cli_latency,
        compare,
        first_call,
        image_text,
        meta_step,
        mkcnet_decisions,
        patch_discrimination,
        retrieval,
        siglip,
        siglip_gpu,
        step_overhead,
        vit_grading,
    )
}
NOT_SCRIPTS = {"__init__", "cases", "test_bench_kernels"}  # the cases are compare's; pytest-benchmark's own file


def test_every_benchmark_script_has_a_smoke_test():
    assert {p.stem for p in BENCHMARKS.glob("*.py")} - NOT_SCRIPTS == set(SCRIPTS)


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_benchmark_script_runs_at_tiny_sizes(name, tmp_path, monkeypatch, in_process):
    SCRIPTS[name](tmp_path, monkeypatch)


def test_compare_pools_fresh_processes_by_their_own_ratios(tmp_path, in_process):
    script = _script("compare")
    from benchmarks.compare import Measured, ratio, ratios

    slow, fast = Measured("a", "a", "qualcl", process_medians=[2.0, 3.0, 9.0]), Measured("b", "b", "floor")
    fast.process_medians = [1.0, 2.0, 3.0]
    assert ratios(slow, fast) == [2.0, 1.5, 3.0] and ratio(slow, fast) == 2.0  # per process, then the median
    assert slow.median == 3.0 and ratio(slow, Measured("c", "c", "floor", times=[1.5])) == 2.0
    assert ratio(slow, Measured("d", "d", "floor", error="OOM")) is None
    command = ["--groups", "topk", "--size", "96", "--threads", "1", "--repeats", "1", "--warmup", "1"]
    assert script.main([*command, "--budget", "0", "--no-memory", "--processes", "2", "--out", str(tmp_path)]) == 0
    raw = json.loads((tmp_path / "cpu-quick.json").read_text())["results"]["topk"]
    assert all(len(m["process_medians"]) == 2 and len(m["times"]) >= 6 for m in raw.values())
    text = (tmp_path / "cpu-quick.md").read_text()
    assert "timed in 2 fresh processes" in text
    floor_cells = [row[3] for row in _rows(text, "### ")]
    assert all(cell.endswith(")") and "–" in cell for cell in floor_cells), floor_cells  # median (min–max)
    with pytest.raises(SystemExit):
        script.main(["--processes", "0"])


def test_children_run_as_real_processes(tmp_path):
    """The smoke tests above run each child in this process; here one script's children are real processes
    (``python -m benchmarks.compare`` started in the repository root, as a user runs it)."""
    _script("compare")
    command = [sys.executable, "-m", "benchmarks.compare", "--groups", "topk", "--size", "64", "--threads", "1"]
    command += ["--repeats", "1", "--warmup", "1", "--budget", "0", "--processes", "2", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=BENCHMARKS.parent, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    raw = json.loads((tmp_path / "cpu-quick.json").read_text())["results"]["topk"]
    assert all(len(m["process_medians"]) == 2 and m.get("error") is None for m in raw.values()), raw
