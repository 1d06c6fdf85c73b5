"""Run qualcl's kernels and their peers in one process and write a markdown table of ratios.

    python -m benchmarks.compare                       # CPU, the issue's sizes, 2 threads
    python -m benchmarks.compare --device cuda         # GPU (bf16, N = M = 65,536 by default)
    python -m benchmarks.compare --groups info_nce topk --quick
    python -m benchmarks.compare --size 128 --out /tmp/bench   # a smoke check of the script itself
    python -m benchmarks.compare --groups topk --processes 5   # each group timed in 5 fresh processes

Protocol (``docs/performance.md``, "How to reproduce"): inputs are built once per case; every case is warmed
up, then the cases of a group are timed interleaved (A, B, C, A, B, C, ...) and the median is
reported. With ``--processes P`` (CPU) each group is timed so in P fresh processes, one after another: a
case's time is the median of the processes' medians and a ratio the median of the processes' own ratios,
with their range (on a shared 2-core VM a whole process can run 10-20 % slower or faster than the next,
and a ratio measured inside one process cancels that). Peak memory: on CPU one fresh subprocess per case,
the peak RSS of one iteration (the kernel's ``VmHWM`` counter behind ``ru_maxrss``, reset once the inputs
exist) minus the RSS before it (``tracemalloc`` does not see torch tensors); on CUDA
``torch.cuda.max_memory_allocated`` minus what was allocated before the iteration. Results (and the
machine) go to ``benchmarks/results/<device>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.cases import GROUP_BY_KEY, GROUPS, Case, Group, Run, Shape

RESULTS = Path(__file__).parent / "results"


@dataclass
class Measured:
    """What one case gave: times in seconds, peak extra memory in bytes, or why it did not run."""

    name: str
    label: str
    role: str
    times: list[float] = field(default_factory=list)
    memory: int | None = None
    error: str | None = None
    process_medians: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        """The median time: of the processes' medians when timed in several processes."""
        if self.process_medians:
            return statistics.median(self.process_medians)
        return statistics.median(self.times) if self.times else None


def ratios(a: Measured | None, b: Measured | None) -> list[float]:
    """``a``'s time over ``b``'s: one ratio per process when both were timed in the same processes, else one."""
    if a is None or b is None or a.error or b.error:
        return []
    if a.process_medians and len(a.process_medians) == len(b.process_medians):
        return [x / y for x, y in zip(a.process_medians, b.process_medians, strict=True) if y > 0]
    return [a.median / b.median] if a.median is not None and b.median else []


def ratio(a: Measured | None, b: Measured | None) -> float | None:
    """The median of :func:`ratios` (``None`` when either did not run)."""
    found = ratios(a, b)
    return statistics.median(found) if found else None


def _ratio_cell(a: Measured | None, b: Measured | None) -> str:
    found = ratios(a, b)
    if not found:
        return "—"
    cell = f"{statistics.median(found):.2f}×"
    return cell + (f" ({min(found):.2f}–{max(found):.2f})" if len(found) > 1 else "")


def machine(device: str, threads: int) -> dict[str, str]:
    """Where the numbers come from."""
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "logical cores": str(os.cpu_count()),
        "torch threads": str(threads),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    for module in ("triton", "pytorch_metric_learning", "open_clip"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # an absent peer is recorded, not fatal
            info[module] = "not installed"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = (
            f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
        )
        info["cuda"] = str(torch.version.cuda)
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
            )
            info["driver"] = out.stdout.strip() or "unknown"
        except OSError:
            info["driver"] = "unknown"
    return info


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(run: Run, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def time_group(
    group: Group, shape: Shape, cases: list[Case], *, repeats: int, warmup: int, budget: float
) -> dict[str, Measured]:
    """Warm every case up, then time them interleaved; slow cases get fewer repeats (at least 3)."""
    results = {case.name: Measured(case.name, case.label, case.role) for case in cases}
    runs: dict[str, Run] = {}
    rounds: dict[str, int] = {}
    for case in cases:
        try:
            runs[case.name] = case.build(shape)
            first = _timed(runs[case.name], shape.device)
            for _ in range(warmup - 1 if first < 1.0 else 0):
                first = _timed(runs[case.name], shape.device)
            rounds[case.name] = max(3, min(repeats, int(budget / max(first, 1e-6))))
        except (RuntimeError, MemoryError, ImportError) as error:  # OOM and friends, a peer not installed: record
            results[case.name].error = _short(error)
            runs.pop(case.name, None)
            _free(shape.device)
    for index in range(max(rounds.values(), default=0)):
        for name, run in list(runs.items()):
            if index >= rounds[name]:
                continue
            try:
                results[name].times.append(_timed(run, shape.device))
            except (RuntimeError, MemoryError) as error:
                results[name].error = _short(error)
                del runs[name]
                _free(shape.device)
    return results


def time_group_in_processes(
    group: Group,
    shape: Shape,
    cases: list[Case],
    *,
    processes: int,
    threads: int,
    repeats: int,
    warmup: int,
    budget: float,
) -> dict[str, Measured]:
    """:func:`time_group` in ``processes`` fresh processes, one after another, pooled (see the module's doc)."""
    results = {case.name: Measured(case.name, case.label, case.role) for case in cases}
    command = [sys.executable, "-m", "benchmarks.compare", "--timing-child", group.key, json.dumps(asdict(shape))]
    command += ["--threads", str(threads), "--repeats", str(repeats), "--warmup", str(warmup), "--budget", str(budget)]
    for _ in range(processes):
        out = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1])
        if out.returncode != 0:
            error = _short(RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"))
            for measured in results.values():
                measured.error = measured.error or error
            break
        for name, child in json.loads(out.stdout.strip().splitlines()[-1]).items():
            if child["error"]:
                results[name].error = child["error"]
            elif child["times"]:
                results[name].times += child["times"]
                results[name].process_medians.append(statistics.median(child["times"]))
    return results


def _timing_child(group_key: str, shape_json: str, *, threads: int, repeats: int, warmup: int, budget: float) -> None:
    torch.set_num_threads(threads)
    group = GROUP_BY_KEY[group_key]
    shape = Shape(**json.loads(shape_json))
    cases = [case for case in group.cases if shape.device in case.devices]
    results = time_group(group, shape, cases, repeats=repeats, warmup=warmup, budget=budget)
    print(json.dumps({name: {"times": m.times, "error": m.error} for name, m in results.items()}))


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "out of memory" in text.lower() or "can't allocate" in text.lower():
        return "OOM"
    return text[:80]


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def memory_cuda(case: Case, shape: Shape) -> int | str:
    """Peak bytes allocated by one iteration beyond what existed before it (inputs, module state)."""
    try:
        run = case.build(shape)
        run()  # warm-up: lazy allocations and kernel compilation
        _free("cuda")
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    except (RuntimeError, MemoryError, ImportError) as error:
        return _short(error)
    finally:
        _free("cuda")


def memory_cpu(group: Group, case: Case, shape: Shape, threads: int) -> int | str:
    """Peak RSS growth of one iteration, in a fresh process (so earlier cases cannot hide it)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.compare",
        "--memory-child",
        group.key,
        case.name,
        json.dumps(asdict(shape)),
        "--threads",
        str(threads),
    ]
    # a fixed mmap threshold: every large tensor is its own mapping, returned to the OS when freed, so
    # memory freed while building the inputs cannot hide what the iteration allocates
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1], env=env)
    if out.returncode != 0:
        return _short(RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"))
    return int(json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _memory_child(group_key: str, case_name: str, shape_json: str, threads: int) -> None:
    torch.set_num_threads(threads)
    group = GROUP_BY_KEY[group_key]
    case = next(c for c in group.cases if c.name == case_name)
    shape = Shape(**json.loads(shape_json))
    run = case.build(shape)
    run()  # warm-up: lazy imports, library initialisation (large buffers go back to the OS when freed)
    gc.collect()
    try:  # reset the peak-RSS counter (VmHWM, what ru_maxrss reports) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        run()
        extra = _status_kib("VmHWM") - before
    except OSError:  # no /proc: the ru_maxrss delta (hides a run smaller than the import-time peak)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run()
        extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"extra_bytes": max(extra, 0) * 1024}))  # KiB on Linux


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _memory_ratio(a: float | int | None, b: float | int | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def group_table(group: Group, shape: Shape, results: dict[str, Measured]) -> list[str]:
    baseline = next((r for r in results.values() if r.role == "baseline"), None)
    floor = results.get(group.floor) if group.floor else None
    lines = [
        f"### {group.title}",
        "",
        f"N = {shape.n}, M = {shape.m}, D = {shape.d}, {shape.dtype}"
        + (f", K = {shape.k}" if "top" in group.key or "miner" in group.title.lower() else "")
        + f", τ = {shape.temperature}",
        "",
        "| implementation | median time | × baseline | × bare matmul | peak extra memory | memory × baseline |",
        "|---|---|---|---|---|---|",
    ]
    base_mem = baseline.memory if baseline else None
    for r in results.values():
        if r.error:
            lines.append(f"| {r.label} | {r.error} | — | — | — | — |")
            continue
        role = " (baseline)" if r.role == "baseline" else " (floor)" if r.role == "floor" else ""
        lines.append(
            f"| {r.label}{role} | {_fmt_time(r.median)} | {_ratio_cell(r, baseline)} | "
            f"{_ratio_cell(r, floor)} | {_fmt_bytes(r.memory)} | {_memory_ratio(r.memory, base_mem)} |"
        )
    lines += ["", *(f"{note}" for note in group.notes), ""] if group.notes else [""]
    return lines


def targets(device: str, all_results: dict[str, dict[str, Measured]]) -> list[str]:
    """The issue's targets, evaluated on this run."""

    def get(group: str, name: str) -> Measured | None:
        return all_results.get(group, {}).get(name)

    rows: list[tuple[str, str, str, bool | None]] = []
    if device == "cpu":
        naive, ours, mm = get("info_nce", "naive"), get("info_nce", "auto"), get("topk", "mm")
        miner = get("topk", "auto")
        if (r := ratio(ours, naive)) is not None and naive and ours:
            rows.append(("C1 InfoNCE fwd+bwd time ≤ 1.35× naive torch", f"{r:.2f}×", "≤ 1.35×", r <= 1.35))
            if naive.memory and ours.memory is not None:
                mem = ours.memory / naive.memory
                rows.append(("C1 InfoNCE peak extra memory ≤ 0.25× naive", f"{mem:.3f}×", "≤ 0.25×", mem <= 0.25))
        if (r := ratio(miner, mm)) is not None:
            rows.append(("C2 top-K miner (K = 64) ≤ 1.8× bare matmul", f"{r:.2f}×", "≤ 1.8×", r <= 1.8))
            rows.append(("issue 30: top-K miner (K = 64) ≤ 1.2× bare matmul", f"{r:.2f}×", "≤ 1.2×", r <= 1.2))
        mm_fb = get("info_nce", "mm")
        if (r := ratio(ours, mm_fb)) is not None:
            rows.append(("issue 30: InfoNCE fwd+bwd ≤ 1.05× bare matmul fwd+bwd", f"{r:.2f}×", "≤ 1.05×", r <= 1.05))
        nt = get("ntxent_1024", "auto")
        if nt and nt.median:
            rows.append(("C3 NT-Xent, 1024 pairs, < 0.1 s", _fmt_time(nt.median), "< 100 ms", nt.median < 0.1))
    else:
        mm_f, ours_f = get("info_nce_forward", "mm"), get("info_nce_forward", "auto")
        mm_fb, ours_fb, naive_fb = get("info_nce", "mm"), get("info_nce", "auto"), get("info_nce", "naive")
        clip, clip_ours = get("clip", "open_clip"), get("clip", "auto")
        miner, mm_topk, mm = get("topk", "auto"), get("topk", "mm_topk"), get("topk", "mm")
        for label, a, b, bound in (
            ("G1 InfoNCE forward ≤ 1.3× mm fwd", ours_f, mm_f, 1.3),
            ("G2 InfoNCE fwd+bwd ≤ 1.8× mm fwd+bwd", ours_fb, mm_fb, 1.8),
            ("G2 InfoNCE fwd+bwd ≤ 0.5× naive", ours_fb, naive_fb, 0.5),
            ("G3 CLIP ≤ 0.5× open_clip", clip_ours, clip, 0.5),
            ("G4 miner ≤ 1.5× mm fwd", miner, mm, 1.5),
            ("G4 miner ≤ 0.5× mm + topk", miner, mm_topk, 0.5),
        ):
            if (r := ratio(a, b)) is not None:
                rows.append((label, f"{r:.2f}×", f"≤ {bound}×", r <= bound))
    lines = ["## Targets", "", "| target | measured | bound | met |", "|---|---|---|---|"]
    lines += [f"| {t} | {m} | {b} | {'yes' if ok else 'no'} |" for t, m, b, ok in rows]
    return [*lines, ""]


def render(
    device: str, info: dict[str, str], command: str, tables: list[str], target_lines: list[str], processes: int = 1
) -> str:
    head = [
        f"# qualcl kernel benchmarks — {device.upper()}",
        "",
        f"Command: `{command}`",
        "",
        (
            "Times are medians of interleaved runs in one process (forward + backward unless stated). "
            if processes == 1
            else f"Each group was timed in {processes} fresh processes, one after another: a time is the median of "
            "the processes' medians of interleaved runs (forward + backward unless stated), a ratio the median of "
            "the processes' own ratios, with their range in brackets. "
        )
        + "Peak extra memory: "
        + (
            "peak RSS of one iteration minus the RSS before it, in a fresh process per case (the `VmHWM` counter "
            "behind `ru_maxrss`, reset after the inputs are built)."
            if device == "cpu"
            else "`torch.cuda.max_memory_allocated()` minus what was allocated before the iteration."
        ),
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in info.items()),
        "",
        *target_lines,
        "## Results",
        "",
    ]
    return "\n".join(head + tables) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--groups", nargs="*", default=None, help=f"subset of {[g.key for g in GROUPS]}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed iterations per case (at most)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timing per case (at least 3 runs)")
    parser.add_argument("--quick", action="store_true", help="N, M divided by 8 (a smoke run, not for the record)")
    parser.add_argument("--size", type=int, default=None, help="N, M at most this (a smoke check, not for the record)")
    parser.add_argument("--dtype", default=None, help="override the dtype (CUDA default bfloat16)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--processes", type=int, default=1, help="time each group in this many fresh processes (CPU)")
    parser.add_argument("--memory-child", nargs=3, metavar=("GROUP", "CASE", "SHAPE"), help=argparse.SUPPRESS)
    parser.add_argument("--timing-child", nargs=2, metavar=("GROUP", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        group_key, case_name, shape_json = args.memory_child
        _memory_child(group_key, case_name, shape_json, threads=args.threads)
        return 0
    if args.timing_child:
        group_key, shape_json = args.timing_child
        _timing_child(
            group_key, shape_json, threads=args.threads, repeats=args.repeats, warmup=args.warmup, budget=args.budget
        )
        return 0
    if args.processes < 1 or (args.processes > 1 and args.device != "cpu"):
        parser.error(f"--processes must be at least 1 (more only on --device cpu), got {args.processes}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    torch.set_num_threads(args.threads)
    groups = [GROUP_BY_KEY[key] for key in args.groups] if args.groups else list(GROUPS)
    info = machine(args.device, torch.get_num_threads())
    tables: list[str] = []
    all_results: dict[str, dict[str, Measured]] = {}
    for group in groups:
        shape = group.cpu if args.device == "cpu" else group.cuda
        if args.quick:
            shape = replace(shape, n=max(64, shape.n // 8), m=max(64, shape.m // 8))
        if args.size:
            shape = replace(shape, n=min(shape.n, args.size), m=min(shape.m, args.size))
        if args.dtype:
            shape = replace(shape, dtype=args.dtype)
        cases = [case for case in group.cases if args.device in case.devices]
        print(f"[{group.key}] {shape}", flush=True)
        timing = {"repeats": args.repeats, "warmup": args.warmup, "budget": args.budget}
        if args.processes > 1:
            results = time_group_in_processes(
                group, shape, cases, processes=args.processes, threads=args.threads, **timing
            )
        else:
            results = time_group(group, shape, cases, **timing)
        _free(args.device)
        if not args.no_memory:
            for case in cases:
                if results[case.name].error:
                    continue
                used = (
                    memory_cpu(group, case, shape, args.threads) if args.device == "cpu" else memory_cuda(case, shape)
                )
                if isinstance(used, str):
                    results[case.name].error = used
                else:
                    results[case.name].memory = used
        for r in results.values():
            print(f"  {r.name:10s} {_fmt_time(r.median):>10s} {_fmt_bytes(r.memory):>12s} {r.error or ''}", flush=True)
        all_results[group.key] = results
        tables += group_table(group, shape, results)

    command = "python -m benchmarks.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(args.device, info, command.strip(), tables, targets(args.device, all_results), args.processes)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick or args.size else ""
    (args.out / f"{args.device}{suffix}.md").write_text(text)
    raw = {key: {name: asdict(m) for name, m in res.items()} for key, res in all_results.items()}
    (args.out / f"{args.device}{suffix}.json").write_text(json.dumps({"machine": info, "results": raw}, indent=1))
    print(f"wrote {args.out / f'{args.device}{suffix}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
