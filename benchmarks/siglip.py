"""SigLIP on CPU: qualcl's streaming ``fused_siglip`` against open_clip's dense ``SigLipLoss``.

    python -m benchmarks.siglip                       # B = 8192, D = 256, 2 threads, 5 rounds
    python -m benchmarks.siglip --batch 4096 --rounds 3 --threads 1 2

Forward + backward of the loss with a learnt scale and bias (10 and -10, the paper's start) on
L2-normalised float32 features. Each case runs in a fresh subprocess (its peak resident memory is
its own): one warm-up call, then one timed call; the cases alternate round by round (the CPU is
shared and its load drifts, so ratios are taken within a round, then their median). Peak = growth
of the process's maximum resident set over the two calls, above what it held once the inputs
existed and a call at B = 64 had loaded the code paths (allocator slack included).

* ``open_clip``: ``open_clip.loss.SigLipLoss`` (dense ``B × B`` logits, labels and log-sigmoid);
* ``qualcl``: ``qualcl.kernels.siglip.fused_siglip(impl="torch")`` with its default blocks;
* ``qualcl-module``: ``qualcl.losses.siglip.SigLipLoss(normalize=False)`` with the scale and bias passed in.

Results go to ``benchmarks/results/siglip_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CASES = ("open_clip", "qualcl", "qualcl-module")
NOTE = (
    "The machine is shared (a load average above 2 means processes wait for one of the 2 cores): the 1-thread "
    "rows are the less load-sensitive comparison. qualcl's peak is the two block buffers (2 × 32 MiB), the "
    "gradient pieces the forward pass accumulates ((N + M)·D) and the input gradients; open_clip's holds the "
    "B × B logits, labels and log-sigmoid terms (256 MiB each in float32 at B = 8192)."
)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _case(name: str, batch: int, dim: int, threads: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_()
    text = F.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_()
    log_scale = torch.tensor(10.0).log().requires_grad_()
    bias = torch.tensor(-10.0, requires_grad=True)

    if name == "open_clip":
        from open_clip.loss import SigLipLoss

        fn = SigLipLoss()
    elif name == "qualcl":
        from qualcl.kernels.siglip import fused_siglip

        def fn(i, t, s, b):  # type: ignore[no-untyped-def]
            return fused_siglip(i, t, s, b, impl="torch")
    else:
        from qualcl.losses.siglip import SigLipLoss as QualclSigLip

        fn = QualclSigLip(normalize=False, learnable=False, impl="torch")

    def step(i: torch.Tensor, t: torch.Tensor) -> float:
        for x in (i, t, log_scale, bias):
            x.grad = None
        loss = fn(i, t, log_scale.exp(), bias)
        loss.backward()
        return float(loss.detach())

    step(image[:64].detach().requires_grad_(), text[:64].detach().requires_grad_())  # loads the code paths
    base = _rss_mib()
    step(image, text)  # warm-up
    start = time.perf_counter()
    value = step(image, text)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": max(0.0, _max_rss_mib() - base), "value": value}


def _run(name: str, batch: int, dim: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.siglip",
            "--worker",
            name,
            "--batch",
            str(batch),
            "--dim",
            str(dim),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _load() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", choices=CASES)
    parser.add_argument("--out", type=Path, default=RESULTS / "siglip_cpu.md")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_case(args.worker, args.batch, args.dim, args.threads[0])))
        return

    import torch

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    loads = [_load()]
    rows = []
    for threads in args.threads:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in CASES}
        for r in range(args.rounds):
            for name in CASES if r % 2 == 0 else tuple(reversed(CASES)):
                runs[name].append(_run(name, args.batch, args.dim, threads))
                print(threads, r, name, runs[name][-1], flush=True)
            loads.append(_load())
        base = runs["open_clip"]
        base_peak = statistics.median(x["peak_mib"] for x in base)
        for name in CASES:
            ratios = [a["seconds"] / b["seconds"] for a, b in zip(runs[name], base, strict=True)]
            peak = statistics.median(x["peak_mib"] for x in runs[name])
            rows.append(
                (
                    threads,
                    name,
                    statistics.median(x["seconds"] for x in runs[name]),
                    statistics.median(ratios),
                    max(ratios),
                    peak,
                    peak / base_peak if base_peak > 0 else math.nan,  # no growth at all: no ratio (small B)
                    max(abs(a["value"] - b["value"]) / abs(b["value"]) for a, b in zip(runs[name], base, strict=True)),
                )
            )
    command = "python -m benchmarks.siglip " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# SigLIP: streaming vs open_clip's dense SigLipLoss (cpu)",
        "",
        f"{started}, {_cpu()} ({platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores), "
        f"torch {torch.__version__}; load average (1 min) before and after each round: {', '.join(loads)}.",
        f"Command: `{command}`.",
        "",
        f"B = {args.batch}, D = {args.dim}, float32, learnt scale and bias (10, -10); forward + backward, each case "
        f"in its own process (one warm-up, one timed call), the cases alternating over {args.rounds} rounds. "
        "Times and peaks are medians over rounds; × open_clip time is the median (and the worst) of the "
        "per-round ratios. Peak = growth of the process's maximum resident set over the calls (allocator slack "
        "included). Relative difference = largest |loss − open_clip's| / open_clip's over the rounds.",
        "",
        NOTE,
        "",
        "| threads | case | seconds | × open_clip time (worst) | peak (MiB) | × open_clip peak | rel. difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for threads, name, seconds, ratio, worst, peak, peak_ratio, diff in rows:
        lines.append(
            f"| {threads} | {name} | {seconds:.2f} | {ratio:.2f} ({worst:.2f}) | {peak:.0f} | {peak_ratio:.3f} "
            f"| {diff:.1e} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
