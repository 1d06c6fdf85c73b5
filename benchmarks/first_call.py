"""The cost of the first call of a fused loss, in a fresh process: time, resident memory, modules imported.

    python -m benchmarks.first_call [--runs 3] [--out FILE]

Each row runs in a new Python process that imports torch and qualcl, then times one call (forward
and backward, 256 × 128 embeddings, CPU, 2 threads) and reads the process's peak resident memory
before and after it (``ru_maxrss``). ``F.cross_entropy`` on the dense logits is the reference row.
Whether the compiler stack (``torch._dynamo``, sympy, triton) was imported by the call is reported:
eager calls of qualcl's kernels must not import it (they did before: the ``torch.library`` op
wrapper imports ``torch._dynamo`` on its first call). Results:
``benchmarks/results/first_call_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

CASES = {
    "F.cross_entropy (dense logits)": "torch.nn.functional.cross_entropy(q @ c.T / 0.07, torch.arange(n))",
    "kernels.fused_info_nce": "kernels.fused_info_nce(q, c, positive_index=torch.arange(n), temperature=0.07)",
    "InfoNCE(impl='torch')": "InfoNCE(impl='torch')(q, c)",
    "kernels.topk_similarity": "kernels.topk_similarity(q, c, 8)[0].sum()",
}

_CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(2)
from qualcl import kernels
from qualcl.losses import InfoNCE
n = 256
q = torch.randn(n, 128, requires_grad=True)
c = torch.randn(n, 128, requires_grad=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
out = {expression}
if out.requires_grad:
    out.backward()
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": seconds, "rss_mib": (after - before) / 1024,
    "compiler": any(m in sys.modules for m in ("torch._dynamo", "sympy", "triton"))}}))
"""


def measure(expression: str) -> dict[str, float]:
    """Run one first call in a fresh process; return its seconds, added peak RSS (MiB) and compiler import."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD.format(expression=expression)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    """Measure every case in `--runs` fresh processes (three by default) and write the medians to the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per case; the median counts (default 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "first_call_cpu.md")
    args = parser.parse_args(argv)
    rows = []
    for name, expression in CASES.items():
        runs = sorted((measure(expression) for _ in range(args.runs)), key=lambda r: r["seconds"])
        median = runs[len(runs) // 2]
        rows.append((name, median["seconds"] * 1000, median["rss_mib"], median["compiler"]))
        print(f"{name}: {median['seconds'] * 1000:.1f} ms, +{median['rss_mib']:.0f} MiB, compiler {median['compiler']}")
    reference = rows[0][1]
    lines = [
        "# First call of a loss in a fresh process (CPU)",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, 2 threads; median of {args.runs} fresh processes; forward + backward "
        "of 256 × 128 embeddings. `python -m benchmarks.first_call`.",
        "",
        "| call | first call (ms) | × cross_entropy | added peak RSS (MiB) | imports the compiler stack |",
        "|---|---:|---:|---:|---|",
    ]
    for name, ms, rss, compiler in rows:
        lines.append(f"| {name} | {ms:.1f} | {ms / reference:.1f} | {rss:.0f} | {'yes' if compiler else 'no'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
