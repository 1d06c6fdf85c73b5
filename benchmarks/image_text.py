"""Image–text pre-training costs: the masked ViT encoder against full token sequences, and the caption loss's memory.

    python -m benchmarks.image_text                  # CPU, 2 threads
    python -m benchmarks.image_text --image-size 224 --encoder vit_base --batch 16

Each case runs in a fresh subprocess (its peak resident memory is its own): one warm-up, then the
median of ``--repeats`` timed forward + backward calls.

* ``encoder-masked-r`` / ``encoder-full``: ``ViTEncoder.forward_masked`` on the visible
  ``round(L·(1 − r))`` patches vs ``forward_features`` on all ``L`` — MAE's claim is that the
  encoder costs about ``(1 − r)`` of the full one (the patch embedding of all patches stays).
* ``step-masked`` / ``step-full``: one whole pre-training step of the recipe's model
  (contrastive on the masked pass, masked image, masked caption with fusion) with mask ratio 0.75
  vs 0 (the reconstruction loss then over all patches).
* ``caption-V``: the caption decoder's logits and :class:`qualcl.losses.CaptionLoss` for a
  vocabulary of ``V`` ids (the recipe's compact BPE vocabulary vs CLIP's 49,408), ``T = 48``.

Results go to ``benchmarks/results/image_text_cpu.md`` (``--out``: another folder).
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


def _case(name: str, args: argparse.Namespace) -> dict[str, float]:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n, size = args.batch, args.image_size
    images = torch.rand(n, 3, size, size, generator=g)
    if name.startswith("encoder"):
        from qualcl.functional import random_masking
        from qualcl.models import ViTEncoder, build_encoder

        encoder = build_encoder(args.encoder, image_size=size)
        if not isinstance(encoder, ViTEncoder):
            raise SystemExit(f"--encoder {args.encoder} is not a ViT (the encoder cases mask its patches)")
        ratio = float(name.split("-")[-1]) if name.startswith("encoder-masked") else 0.0
        masking = random_masking(torch.zeros(n, encoder.num_patches, 1), ratio, generator=g)

        def run() -> None:
            encoder.zero_grad(set_to_none=True)
            out = encoder.forward_masked(images, masking.ids_keep) if ratio else encoder.forward_features(images)
            out.float().pow(2).mean().backward()  # type: ignore[no-untyped-call]

    elif name.startswith("step"):
        from qualcl.models import CaptionTokenizer
        from qualcl.recipes.fundus_mm.config import ModelConfig, TrainConfig
        from qualcl.recipes.fundus_mm.model import FundusMMNet
        from qualcl.recipes.fundus_mm.modules import build_objectives

        captions = [f"left eye, grade {i % 5} with {i} microaneurysms; image quality usable" for i in range(n)]
        tok = CaptionTokenizer.fit(captions)
        ids = tok.encode(captions)
        ratio = 0.75 if name == "step-masked" else 0.0
        model = ModelConfig(
            encoder=args.encoder, mask_ratio=ratio, contrastive_view="masked", loss_on="masked" if ratio else "all"
        )
        net = FundusMMNet(model, tok, size)
        objectives = build_objectives(model, TrainConfig(), pad_id=tok.pad_id, gather=False)

        def run() -> None:
            net.zero_grad(set_to_none=True)
            sum(objectives(net(images, ids, generator=torch.Generator().manual_seed(1))).values()).backward()

    else:
        from qualcl.heads import CaptionDecoder
        from qualcl.losses import CaptionLoss

        vocab, t = int(name.split("-")[1]), 48
        decoder = CaptionDecoder(vocab, 128, 2, 4, context_length=t, context_dim=128, pad_id=0)
        ids = torch.randint(1, vocab, (n, t), generator=g)
        context = torch.randn(n, 17, 128, generator=g)
        loss_fn = CaptionLoss(pad_id=0)

        def run() -> None:
            decoder.zero_grad(set_to_none=True)
            loss_fn(decoder(ids[:, :-1], context), ids[:, 1:]).backward()

    before = _rss_mib()
    run()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_mib": _rss_mib() - before}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--encoder", default="vit_tiny")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab", default="150,49408", help="caption vocabularies V")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default benchmarks/results)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(_case(args.case, args)))
        return
    names = ["encoder-full", "encoder-masked-0.5", "encoder-masked-0.75", "step-full", "step-masked"]
    names += [f"caption-{v}" for v in args.vocab.split(",")]
    results: dict[str, dict[str, float] | None] = {}
    for name in names:
        command = [sys.executable, "-m", "benchmarks.image_text", "--case", name]
        for flag in ("encoder", "image_size", "batch", "repeats", "threads"):
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
        print(name, results[name] or done.stderr[-300:], flush=True)
    full = results["encoder-full"]
    patches = (args.image_size // 16) ** 2
    lines = [
        "# Image–text pre-training costs (cpu)",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, {platform.machine()}, {args.threads} threads, "
        f"`{args.encoder}` at {args.image_size} px ({patches} patches), batch {args.batch}; median of "
        f"{args.repeats} forward + backward calls after one warm-up, each case in its own process. Peak = "
        "maximum resident set size growth of that process (includes allocator slack).",
        "",
        "| case | seconds | × full encoder | peak (MiB) |",
        "|---|---|---|---|",
    ]
    labels = {
        "encoder-full": "encoder, all patches",
        "encoder-masked-0.5": "encoder, mask ratio 0.5",
        "encoder-masked-0.75": "encoder, mask ratio 0.75",
        "step-full": "whole pre-training step, mask ratio 0",
        "step-masked": "whole pre-training step, mask ratio 0.75",
    }
    labels.update({f"caption-{v}": f"caption decoder + loss, V = {int(v):,}, T = 48" for v in args.vocab.split(",")})
    for name, label in labels.items():
        r = results.get(name)
        if r is None:
            lines.append(f"| {label} | failed | | |")
            continue
        ratio = f"{r['seconds'] / full['seconds']:.2f}" if full and name.startswith("encoder") else ""
        lines.append(f"| {label} | {r['seconds']:.3f} | {ratio} | {r['peak_mib']:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "image_text_cpu.md").write_text("\n".join(lines) + "\n")
    (args.out / "image_text_cpu.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
