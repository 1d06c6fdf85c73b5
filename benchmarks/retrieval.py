"""Circle loss against pytorch-metric-learning's, and exact search against matmul + topk and FAISS.

    python -m benchmarks.retrieval                   # CPU, 2 threads: circle loss, then search
    python -m benchmarks.retrieval --search-only     # only the search tables (the circle table is kept)
    python -m benchmarks.retrieval --sizes 1024,4096 --database 20000
    python -m benchmarks.retrieval --sizes 64 --search 10x300 --results /tmp/bench   # a smoke check of the script

Circle loss: each case runs in a fresh subprocess (so its peak resident memory is its own): one
warm-up, then the median of ``--repeats`` timed calls; forward + backward on ``(N, 128)`` float32
embeddings with 100 random classes (qualcl per anchor, ``m = 0.4``, ``γ = 80`` — PML's defaults,
which qualcl equals). Peak memory is the subprocess's maximum resident set size minus its size
before the case (``ru_maxrss``), so it includes allocator slack.

Search: ``k = 10`` cosine neighbours of ``Q`` queries in a ``(N, 512)`` float32 database, for each
``Q × N`` of ``--search`` (the 1M-row database is a memory-mapped ``.npy`` file). Each shape runs
in one subprocess; its methods (qualcl ``RetrievalIndex``, FAISS ``IndexFlatIP``, matmul +
``torch.topk``) are timed interleaved, round after round, and the best of ``--search-repeats``
rounds is reported with the median, wall clock and process CPU time (a shared machine slows calls
unevenly; interleaving keeps the ratios fair). Every method's indices are compared with plain
``torch.topk``'s. Results go to ``benchmarks/results/retrieval_cpu.md`` (machine, load, command), or to
``--results``' folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.compare import cpu_model

RESULTS = Path(__file__).parent / "results"
MEMORY_MAPPED_ROWS = 200_000
"""Databases of more rows are written to a ``.npy`` file and searched memory-mapped, as a large index would be."""


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

            flat = faiss.IndexFlatIP(512)
            flat.add(database.numpy())

            def run() -> object:
                return torch.from_numpy(flat.search(queries.numpy(), 10)[1])

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


SEARCH_METHODS = {
    "qualcl": "qualcl `RetrievalIndex.search` (default: the bfloat16 screen where this CPU has native bfloat16)",
    "qualcl_f32": "qualcl `RetrievalIndex(screen=False).search` (float32 matmul path)",
    "faiss": "FAISS `IndexFlatIP.search`",
    "dense": "matmul + `torch.topk`",
    "mm": "bare matmul, torch (no selection: the floor of the float32 path)",
    "np_mm": "bare matmul, NumPy's BLAS (no selection; CPU only)",
}
"""The methods timed on each search shape; the two bare matmuls return scores, not indices: they show the
floor each BLAS sets (FAISS calls its own BLAS, qualcl and ``torch.topk`` call torch's)."""


def _search(
    queries_n: int, database_n: int, repeats: int, threads: int, folder: str, device: str = "cpu"
) -> dict[str, object]:
    """Time the search methods interleaved on one shape; best and median seconds, CPU seconds, agreement.

    On CUDA the queries (and an in-memory database) live on the GPU; a memory-mapped database stays
    on the host and is streamed to the GPU by ``RetrievalIndex``; FAISS runs on the GPU when its GPU
    build is installed, else on the host copy (``faiss_device`` says which).
    """
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    if database_n > MEMORY_MAPPED_ROWS:  # memory-mapped, written in slices
        path = Path(folder) / f"database_{database_n}.npy"
        mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(database_n, 512))
        step = max(1, MEMORY_MAPPED_ROWS // 2)
        for row in range(0, database_n, step):
            part = torch.randn(min(step, database_n - row), 512, generator=g)
            mapped[row : row + part.shape[0]] = torch.nn.functional.normalize(part, dim=1).numpy()
        mapped.flush()
        del mapped
        database = torch.from_numpy(np.load(path, mmap_mode="r+"))
    else:
        database = torch.nn.functional.normalize(torch.randn(database_n, 512, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(queries_n, 512, generator=g), dim=1)
    import faiss

    faiss.omp_set_num_threads(threads)
    flat: faiss.Index = faiss.IndexFlatIP(512)
    flat.add(database.numpy())
    faiss_device = "cpu"
    if device == "cuda" and hasattr(faiss, "StandardGpuResources"):
        flat, faiss_device = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, flat), "cuda"
    host_queries = queries.numpy()
    if device == "cuda":
        queries = queries.cuda()
        database = database.cuda() if database_n <= MEMORY_MAPPED_ROWS else database
    from qualcl.evaluation import RetrievalIndex

    index = RetrievalIndex(database)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def dense() -> torch.Tensor:
        return (queries @ database.to(queries.device).T).topk(10, dim=1).indices.cpu()

    runs: dict[str, Callable[[], object]] = {
        "qualcl": lambda: index.search(queries, 10).indices.cpu(),
        "faiss": lambda: torch.from_numpy(flat.search(host_queries, 10)[1]),
        "dense": dense,
        "mm": lambda: torch.mm(queries, database.to(queries.device).T),
    }
    if device == "cpu":  # the screen is a CPU path: on CUDA both indexes would run the same kernel
        plain = RetrievalIndex(database, screen=False)
        runs["qualcl_f32"] = lambda: plain.search(queries, 10).indices.cpu()
        host_database = database.numpy()
        runs["np_mm"] = lambda: host_queries @ host_database.T
    reference = dense()
    out: dict[str, object] = {"load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    out["faiss_device"] = faiss_device
    from qualcl.kernels._topk_screen import bf16_matmul_is_native

    out["native_bf16"] = device == "cpu" and bf16_matmul_is_native()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for name, run in runs.items():
        found = run()  # also the warm-up
        if name.endswith("mm"):  # scores, not indices
            out[f"{name}_agreement"] = None
        else:
            assert isinstance(found, torch.Tensor)
            out[f"{name}_agreement"] = float((found == reference).double().mean())
        del found
    for _ in range(repeats):
        for name, run in runs.items():
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            sync()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    for name in runs:
        out[f"{name}_best"], out[f"{name}_median"] = min(wall[name]), statistics.median(wall[name])
        out[f"{name}_cpu"] = min(cpu[name])
    out["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return out


def _search_tables(results: list[tuple[int, int, dict[str, object] | None, str]]) -> list[str]:
    lines = [
        "| Q × N | method | best (s) | median (s) | CPU (s) | × FAISS (best) | × matmul + topk (best) | "
        "same indices as torch.topk | load before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for q, n, r, error in results:
        shape = f"{q:,} × {n:,}" + (" (memory-mapped)" if n > MEMORY_MAPPED_ROWS else "")
        if r is not None and r.get("faiss_device") not in (None, "cpu"):
            shape += f", FAISS on {r['faiss_device']}"
        if r is None:
            lines.append(f"| {shape} | failed ({error}) | | | | | | | |")
            continue
        for name, label in SEARCH_METHODS.items():
            if f"{name}_best" not in r:  # a method this run did not time (NumPy on CUDA, older results)
                continue
            best = float(r[f"{name}_best"])  # type: ignore[arg-type]
            agreement = r[f"{name}_agreement"]
            same = "—" if agreement is None else f"{float(agreement):.4f}"  # type: ignore[arg-type]
            lines.append(
                f"| {shape} | {label} | {best:.3f} | {float(r[f'{name}_median']):.3f} | "  # type: ignore[arg-type]
                f"{float(r[f'{name}_cpu']):.3f} | {best / float(r['faiss_best']):.2f}× | "  # type: ignore[arg-type]
                f"{best / float(r['dense_best']):.2f}× | {same} | "  # type: ignore[arg-type]
                f"{r['load_before']} / {r['load_after']} |"
            )
    return lines


def _native_bf16(results: list[tuple[int, int, dict[str, object] | None, str]]) -> str:
    """``yes`` / ``no`` from the shapes' records (``unknown`` when none recorded it)."""
    seen = {bool(r["native_bf16"]) for _, _, r, _ in results if r is not None and "native_bf16" in r}
    return "unknown" if len(seen) != 1 else ("yes" if seen.pop() else "no")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048,4096,8192,16384", help="circle loss batch sizes N")
    parser.add_argument("--database", type=int, default=100_000, help="search database size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--search",
        default="1000x100000,10000x100000,1000x1000000",
        help=f"search shapes Q x N (N > {MEMORY_MAPPED_ROWS:,}: memory-mapped)",
    )
    parser.add_argument("--search-repeats", type=int, default=5, help="interleaved rounds per search shape")
    parser.add_argument("--search-only", action="store_true", help="keep the committed circle-loss table")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the search queries")
    parser.add_argument("--out", type=Path, default=None, help="search results file (default results/retrieval_cpu.md)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of retrieval_cpu.md and .json")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--search-case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.case:  # child process: one case, JSON on stdout
        kind, impl, n = args.case.split(":")
        print(json.dumps(_case(kind, impl, int(n), args.repeats, args.threads)))
        return
    if args.search_case:  # child process: one search shape, JSON on stdout
        q, n, folder = args.search_case.split(":", 2)
        print(json.dumps(_search(int(q), int(n), args.search_repeats, args.threads, folder, args.device)))
        return
    if args.search_only:
        _write_search(args)
        return
    cases = [("circle", impl, int(n)) for n in args.sizes.split(",") for impl in ("qualcl", "pml")]
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
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "retrieval_cpu.md").write_text("\n".join(lines) + "\n")
    (args.results / "retrieval_cpu.json").write_text(json.dumps([[k, i, n, r] for k, i, n, r, _ in rows], indent=2))
    _write_search(args)


def _write_search(args: argparse.Namespace) -> None:
    """Run the search shapes (one subprocess each) and put their table after the circle-loss table."""
    import tempfile

    results: list[tuple[int, int, dict[str, object] | None, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        for shape in args.search.split(","):
            q, n = (int(x) for x in shape.split("x"))
            command = [sys.executable, "-m", "benchmarks.retrieval", "--search-case", f"{q}:{n}:{folder}"]
            command += ["--search-repeats", str(args.search_repeats), "--threads", str(args.threads)]
            command += ["--device", args.device]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                results.append((q, n, None, done.stderr.strip().splitlines()[-1][:80] if done.stderr else "failed"))
            else:
                results.append((q, n, json.loads(done.stdout.strip().splitlines()[-1]), ""))
            print(results[-1], flush=True)
    invocation = "python -m benchmarks.retrieval " + " ".join(args.argv)
    lines = [
        "## Exact search: k = 10, cosine, (N, 512) float32 database",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, {platform.machine()} ({cpu_model()}), "
        f"{os.cpu_count()} logical cores, {args.threads} threads, command `{invocation.strip()}`; native bfloat16 "
        f"(the default search screens with it): {_native_bf16(results)}. "
        f"Each shape in its own process; its methods timed interleaved for {args.search_repeats} rounds after "
        "one warm-up; best and median wall seconds, CPU = the process's CPU seconds of the best call "
        "(both threads; a shared machine, see the load averages, stretches wall times unevenly).",
        "",
        *_search_tables(results),
        "",
    ]
    if args.out is not None:  # e.g. the GPU check: a file of its own
        args.out.write_text(f"# Exact retrieval ({args.device})\n\n" + "\n".join(lines))
        return
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "retrieval_cpu.md"
    text = path.read_text() if path.exists() else "# Circle loss and exact retrieval (cpu)\n"
    head = text.split("## Exact search")[0].rstrip("\n")
    path.write_text(head + "\n\n" + "\n".join(lines))
    raw = args.results / "retrieval_cpu.json"
    data = json.loads(raw.read_text()) if raw.exists() else []
    data = [row for row in data if row[0] != "search"] + [["search", f"{q}x{n}", r] for q, n, r, _ in results]
    raw.write_text(json.dumps(data, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
