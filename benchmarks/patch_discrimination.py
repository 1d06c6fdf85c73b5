"""Patch discrimination: qualcl's streaming criterion against the code's dense ``BatchCriterion``.

    python -m benchmarks.patch_discrimination                 # CPU, 2 threads, B = 4 … 64
    python -m benchmarks.patch_discrimination --batches 4 8 --repeats 5

Local discrimination contrasts the 8 × 8 patch cells of ``4B`` views: ``N = 256·B`` items of
``D = 32``. The code builds the dense ``N × N`` similarity matrix and lets autograd keep its
temporaries; :func:`qualcl.functional.patch_discrimination` streams over column blocks with an
exact backward (on CPU blocks of 256 columns). Each case runs in a fresh subprocess
(its peak resident memory is its own): one warm-up, then the median of ``--repeats`` timed
forward + backward calls.

* ``code-dense``: an autograd re-statement of ``BatchCriterion(negM=1, T=0.1)`` (partners and
  columns detached through ``.detach()``, dense ``exp`` matrix, ``log(1 − P)`` of every column);
* ``qualcl``: the default (on CPU, blocks of 256 columns);
* ``qualcl-1024``: blocks of 1,024 columns (how the block size matters on CPU).

Results go to ``benchmarks/results/patch_discrimination_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CASES = ("code-dense", "qualcl", "qualcl-1024")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _code_dense(features, tau: float):  # type: ignore[no-untyped-def]
    import torch
    import torch.nn.functional as F

    x = F.normalize(features, dim=1)
    c = x.detach()
    n = x.shape[0]
    partner = torch.cat([torch.arange(n // 2, n), torch.arange(n // 2)]).to(x.device)
    similarity = torch.exp(x @ c.T / tau) * (1 - torch.eye(n, device=x.device))
    z = similarity.sum(1)
    positive = torch.exp((x * c[partner]).sum(1) / tau) / z
    negatives = torch.log(1 - similarity / z[:, None]).sum(1) - torch.log(1 - positive)
    return -(torch.log(positive).sum() + negatives.sum()) / n


def _case(name: str, batch: int, args: argparse.Namespace) -> dict[str, float]:
    import torch

    from qualcl.functional import patch_discrimination

    torch.set_num_threads(args.threads)
    n = 256 * batch
    cuda = args.device == "cuda"
    features = torch.randn(n, args.dim, generator=torch.Generator().manual_seed(0)).to(args.device).requires_grad_()

    def run() -> None:
        features.grad = None
        if name == "code-dense":
            loss = _code_dense(features, 0.1)
        else:
            loss = patch_discrimination(features, temperature=0.1, block_size=1024 if name == "qualcl-1024" else None)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()

    base = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mib()
    run()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mib()
    return {"seconds": statistics.median(times), "peak_mib": peak - base}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "patch_discrimination_cpu.md")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(_case(args.case, args.batch, args)))
        return
    rows = []
    for batch in args.batches:
        for name in CASES:
            cmd = [sys.executable, "-m", "benchmarks.patch_discrimination", "--case", name, "--batch", str(batch)]
            cmd += ["--dim", str(args.dim), "--repeats", str(args.repeats), "--threads", str(args.threads)]
            cmd += ["--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                rows.append((batch, name, None))
                print(f"[bench] B={batch} {name}: failed\n{done.stderr[-2000:]}", flush=True)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((batch, name, result))
            print(f"[bench] B={batch} {name}: {result['seconds']:.3f} s, {result['peak_mib']:.0f} MiB", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Patch discrimination: streaming vs the code's dense criterion ({args.device})",
        "",
        f"{stamp}, {platform.machine()}, {args.threads} threads, D = {args.dim}, temperature 0.1; N = 256·B items "
        f"(8 × 8 cells of 4B views); median of {args.repeats} forward + backward calls after one warm-up, each case "
        "in its own process. Peak = growth of the process's maximum resident set over the case (allocator slack "
        "included; on CUDA the allocator's peak above the inputs). Ratios are against `code-dense` at the same B, "
        "measured in the same run.",
        "",
        "| B | N | case | seconds | × code time | peak (MiB) | × code peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in args.batches:
        code = next((r for b, name, r in rows if b == batch and name == "code-dense"), None)
        for b, name, result in rows:
            if b != batch:
                continue
            if result is None:
                lines.append(f"| {batch} | {256 * batch:,} | {name} | failed | | | |")
                continue
            t_ratio = f"{result['seconds'] / code['seconds']:.2f}" if code else ""
            m_ratio = f"{result['peak_mib'] / code['peak_mib']:.2f}" if code and code["peak_mib"] > 0 else ""
            lines.append(
                f"| {batch} | {256 * batch:,} | {name} | {result['seconds']:.3f} | {t_ratio} | "
                f"{result['peak_mib']:.0f} | {m_ratio} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"[bench] wrote {args.out}")


if __name__ == "__main__":
    main()
