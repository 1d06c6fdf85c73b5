"""Circle loss against pytorch-metric-learning's, and exact search against matmul + topk and FAISS, in one run.

    python -m benchmarks.retrieval                   # CPU, 2 threads
    python -m benchmarks.retrieval --sizes 1024,4096 --database 20000

Each case runs in a fresh subprocess (so its peak resident memory is its own): one warm-up, then
the median of ``--repeats`` timed calls. Circle loss: forward + backward on ``(N, 128)`` float32
embeddings with 100 random classes (qualcl per anchor, ``m = 0.4``, ``γ = 80`` — PML's defaults,
which qualcl equals). Search: ``k = 10`` neighbours of 1,000 queries in a ``(N, 512)`` database,
cosine similarity; the indices of every method are compared with plain ``torch.topk``'s. Peak
memory is the subprocess's maximum resident set size minus its size before the case (``ru_maxrss``),
so it includes allocator slack. Results go to ``benchmarks/results/retrieval_<device>.md``.
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


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _case(kind: str, impl: str, n: int, repeats: int, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    if kind == "circle":
        emb = torch.randn(n, 128, generator=g, requires_grad=True)
        labels = torch.randint(0, 100, (n,), generator=g)
        if impl == "pml":
            from pytorch_metric_learning.losses import CircleLoss as PML

            loss_fn = PML(m=0.4, gamma=80)
        else:
            from qualcl.losses import CircleLoss

            loss_fn = CircleLoss(m=0.4, gamma=80.0)

        def run() -> object:
            emb.grad = None
            loss = loss_fn(emb, labels)
            loss.backward()
            return float(loss.detach())

    else:
        database = torch.nn.functional.normalize(torch.randn(n, 512, generator=g), dim=1)
        queries = torch.nn.functional.normalize(torch.randn(1000, 512, generator=g), dim=1)
        if impl == "faiss":
            import faiss

            index = faiss.IndexFlatIP(512)
            index.add(database.numpy())

            def run() -> object:
                return torch.from_numpy(index.search(queries.numpy(), 10)[1])

        elif impl == "dense":

            def run() -> object:
                return (queries @ database.T).topk(10, dim=1).indices

        else:
            from qualcl.evaluation import RetrievalIndex

            chunk = int(impl.split("-")[1])
            index = RetrievalIndex(database, chunk_size=chunk)

            def run() -> object:
                return index.search(queries, 10).indices

    before = _rss_mib()
    result = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    out = {"seconds": statistics.median(times), "peak_mib": _rss_mib() - before}
    if kind == "search":
        reference = (queries @ database.T).topk(10, dim=1).indices
        out["agreement"] = float((torch.as_tensor(result) == reference).double().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048,4096,8192,16384", help="circle loss batch sizes N")
    parser.add_argument("--database", type=int, default=100_000, help="search database size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # child process: one case, JSON on stdout
        kind, impl, n = args.case.split(":")
        print(json.dumps(_case(kind, impl, int(n), args.repeats, args.threads)))
        return
    cases = [("circle", impl, int(n)) for n in args.sizes.split(",") for impl in ("qualcl", "pml")]
    cases += [("search", impl, args.database) for impl in ("qualcl-8192", "qualcl-65536", "dense", "faiss")]
    rows = []
    for kind, impl, n in cases:
        command = [sys.executable, "-m", "benchmarks.retrieval", "--case", f"{kind}:{impl}:{n}"]
        command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            rows.append((kind, impl, n, None, done.stderr.strip().splitlines()[-1][:80] if done.stderr else "failed"))
        else:
            rows.append((kind, impl, n, json.loads(done.stdout.strip().splitlines()[-1]), ""))
        print(rows[-1], flush=True)
    lines = [
        "# Circle loss and exact retrieval (cpu)",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, {platform.machine()}, {args.threads} threads, "
        f"median of {args.repeats} after one warm-up, each case in its own process. Peak = maximum resident "
        "set size growth of that process (includes allocator slack).",
        "",
        "## Circle loss, forward + backward, (N, 128) float32, 100 classes, m = 0.4, γ = 80",
        "",
        "| N | qualcl (s) | PML (s) | time ratio | qualcl peak (MiB) | PML peak (MiB) | memory ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(k, i, n): r for k, i, n, r, _ in rows}
    notes = {(k, i, n): e for k, i, n, _, e in rows}
    for n in [int(s) for s in args.sizes.split(",")]:
        ours, theirs = by.get(("circle", "qualcl", n)), by.get(("circle", "pml", n))

        def cell(r: dict[str, float] | None, key: str, fmt: str, note: str) -> str:
            return format(r[key], fmt) if r else f"failed ({note})"

        ratio = f"{ours['seconds'] / theirs['seconds']:.2f}×" if ours and theirs else "—"
        memory = f"{ours['peak_mib'] / max(theirs['peak_mib'], 1):.2f}×" if ours and theirs else "—"
        lines.append(
            f"| {n} | {cell(ours, 'seconds', '.3f', notes[('circle', 'qualcl', n)])} | "
            f"{cell(theirs, 'seconds', '.3f', notes[('circle', 'pml', n)])} | {ratio} | "
            f"{cell(ours, 'peak_mib', '.0f', '')} | {cell(theirs, 'peak_mib', '.0f', '')} | {memory} |"
        )
    lines += [
        "",
        f"## Exact search: 1,000 queries, k = 10, database {args.database:,} × 512, cosine",
        "",
        "| method | seconds | peak (MiB) | same indices as torch.topk |",
        "|---|---|---|---|",
    ]
    names = {
        "qualcl-8192": "qualcl RetrievalIndex, chunk 8,192",
        "qualcl-65536": "qualcl RetrievalIndex, chunk 65,536",
        "dense": "matmul + torch.topk",
        "faiss": "faiss IndexFlatIP",
    }
    for impl, name in names.items():
        r = by.get(("search", impl, args.database))
        if r is None:
            lines.append(f"| {name} | failed ({notes[('search', impl, args.database)]}) | | |")
        else:
            lines.append(f"| {name} | {r['seconds']:.3f} | {r['peak_mib']:.0f} | {r['agreement']:.4f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "retrieval_cpu.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "retrieval_cpu.json").write_text(json.dumps([[k, i, n, r] for k, i, n, r, _ in rows], indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
