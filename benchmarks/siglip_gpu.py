"""SigLIP on one GPU: qualcl's fused_siglip (Triton) against the dense computation, forward + backward.

    python -m benchmarks.siglip_gpu --batch 65536 --dim 768 --out gpu_check/siglip_cuda.md

The published fused SigLIP kernel (the ``siglip-kernel`` package) reports B = 65,536 in 48.8 ms and
1.4 GB on an H100, against 102 ms and 33 GB for eager code; this measures qualcl's kernel at the same
batch (median of CUDA-event timings after warm-up, peak memory above the inputs) and the dense path
(open_clip's computation, ``impl="naive"``) where it fits. ``--device cpu --batch 512`` checks the
script itself without a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from qualcl.kernels import fused_siglip


def _time(impl: str, batch: int, dim: int, device: str, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    g = torch.Generator(device="cpu").manual_seed(0)
    image = F.normalize(torch.randn(batch, dim, generator=g), dim=1).to(device, dtype).requires_grad_()
    text = F.normalize(torch.randn(batch, dim, generator=g), dim=1).to(device, dtype).requires_grad_()
    scale = torch.tensor(10.0, device=device).requires_grad_()
    bias = torch.tensor(-10.0, device=device).requires_grad_()

    def step() -> None:
        fused_siglip(image, text, scale, bias, impl=impl).backward()  # type: ignore[no-untyped-call]

    step()  # warm-up (compiles the kernels)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        if cuda:
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1000)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else float("nan")
    return statistics.median(times), peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.device == "cuda" else torch.float32
    impls = ("triton", "naive") if args.device == "cuda" else ("torch", "naive")
    lines = [
        f"# SigLIP forward + backward, B = {args.batch}, D = {args.dim}, {dtype}, {args.device}",
        "",
        "| impl | median ms | peak GiB above inputs |",
        "|---|---:|---:|",
    ]
    for impl in impls:
        try:
            ms, peak = _time(impl, args.batch, args.dim, args.device, dtype, args.repeats)
            lines.append(f"| {impl} | {ms:.1f} | {peak:.2f} |")
        except torch.OutOfMemoryError:
            lines.append(f"| {impl} | OOM | OOM |")
        if args.device == "cuda":
            torch.cuda.empty_cache()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
