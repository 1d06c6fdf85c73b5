"""Can the image-text recipe's encoder learn the synthetic DR grades at all? Supervised ceilings at CPU size.

    python -m benchmarks.vit_grading                 # the default fundus-mm data, 2 threads
    python -m benchmarks.vit_grading --preset smoke --epochs 1 --out /tmp/vit.md   # a smoke check of the script

Trains each encoder *supervised* (cross-entropy on the grade, AdamW, one-cycle schedule,
horizontal flips, batch 32) from random init on the training split of the image-text recipe's
default data (576 images at 64 px, seed 0) and reports test accuracy and QWK (160 images) after
each epoch. If a supervised ViT cannot learn the grades from these images, no self-supervised
objective on the same ViT will make zero-shot or fine-tuned grading work, whatever it is.

Cases: the recipe's ``vit_tiny`` (patch 16, 16 tokens at 64 px) at two learning rates, a patch-8
ViT (64 tokens, 6 blocks), a ``vit_tiny`` with a patch-local hierarchical-MLP stem (Touvron et al.,
"Three things everyone should know about Vision Transformers", ECCV 2022; it keeps masking
leak-free), qualcl's ``convvit_tiny`` (a convolutional stem of stride 8 under six ViT blocks:
Xiao et al., "Early Convolutions Help Transformers See Better", NeurIPS 2021; masked with
ConvMAE's masked convolutions), and torchvision's ResNet-18 as the convolutional reference.

``--cases`` re-measures some cases only: their rows in the results table are replaced, the other
rows (and the dates they were measured) are kept.

Results go to ``benchmarks/results/vit_grading_cpu.md`` (``--out``: another file).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

RESULTS = Path(__file__).parent / "results"
Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]
"""Training images and grades, test images and grades (images in [0, 1]), and the image side."""


class _ChannelNorm(nn.Module):
    """LayerNorm over channels at each position (no statistics across patches: masking stays leak-free)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed: torch.Tensor = self.norm(x.permute(0, 2, 3, 1))
        return normed.permute(0, 3, 1, 2)


def _model(case: str, size: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    if case == "convvit_tiny":
        from qualcl.models import build_encoder

        return nn.Sequential(build_encoder("convvit_tiny", image_size=size), nn.Linear(192, 5))
    if case == "resnet18":
        import torchvision

        resnet: nn.Module = torchvision.models.resnet18(num_classes=5)
        return resnet
    patch, depth = (8, 6) if case == "vit_p8_d6" else (16, 12)
    net = VisionTransformer(img_size=size, patch_size=patch, num_classes=5, embed_dim=192, depth=depth, num_heads=3)
    if case == "vit_tiny_hmlp":
        c = 48  # conv 4x4/4, then 2x2/2, then 2x2/2: every kernel stays inside its 16-px patch
        net.patch_embed.proj = nn.Sequential(
            nn.Conv2d(3, c, 4, 4), _ChannelNorm(c), nn.GELU(), nn.Conv2d(c, c, 2, 2), _ChannelNorm(c), nn.GELU(),
            nn.Conv2d(c, 192, 2, 2),
        )  # fmt: skip
    return net


CASES = {
    "vit_tiny lr 1e-3": ("vit_tiny", 1e-3),
    "vit_tiny lr 3e-4": ("vit_tiny", 3e-4),
    "ViT patch 8, 6 blocks, lr 1e-3": ("vit_p8_d6", 1e-3),
    "vit_tiny + hMLP stem, lr 3e-4": ("vit_tiny_hmlp", 3e-4),
    "convvit_tiny (conv stem, stride 8, + 6 ViT blocks), lr 1e-3": ("convvit_tiny", 1e-3),
    "ResNet-18, lr 1e-3": ("resnet18", 1e-3),
}


def _data(root: Path, preset: str = "default") -> Data:
    """The image-text recipe's data of ``preset``, generated into ``root`` (unless it is there already)."""
    from qualcl.data.synthetic import ensure_fundus_dataset
    from qualcl.recipes.fundus_mm import fundus_mm_config
    from qualcl.recipes.fundus_mm.data import load_fundus_mm_data

    config = fundus_mm_config(preset, overrides=[f"data.data_dir={root}"])
    d = config.data
    ensure_fundus_dataset(
        root, d.num_images, d.image_size, d.seed, d.lq_ratio, progress=False, extra_test=d.extra_test_images
    )
    data = load_fundus_mm_data(d, root)
    xtr, xte = data.train.images.float() / 255, data.test.images.float() / 255
    return xtr, torch.as_tensor(data.train.label), xte, torch.as_tensor(data.test.label), config.data.image_size


def _train(case: str, lr: float, data: Data, epochs: int, seed: int) -> list[tuple[float, float]]:
    from torchmetrics.functional import cohen_kappa

    xtr, ytr, xte, yte, size = data
    torch.manual_seed(seed)
    net = _model(case, size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    per_epoch = len(ytr) // 32
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * per_epoch, pct_start=0.1)
    scores = []
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(ytr))
        for i in range(per_epoch):
            batch = order[i * 32 : (i + 1) * 32]
            x = xtr[batch]
            x = torch.where((torch.rand(len(batch)) < 0.5)[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(net(x), ytr[batch])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            schedule.step()
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(xte[i : i + 64]).argmax(1) for i in range(0, len(yte), 64)])
        qwk = cohen_kappa(pred, yte, "multiclass", num_classes=5, weights="quadratic")
        scores.append((float((pred == yte).float().mean()), float(qwk)))
    return scores


def main(argv: list[str] | None = None) -> None:
    """Train every case and write the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", default=None, help="fundus-mm data folder (default: generate it in a temp folder)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default=None, help="case labels separated by semicolons (default: all)")
    parser.add_argument("--note", default="", help="a remark for the measured rows (e.g. 'machine busy')")
    parser.add_argument("--preset", default="default", help="the fundus-mm preset whose data is used")
    parser.add_argument("--out", type=Path, default=RESULTS / "vit_grading_cpu.md", help="the results table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = list(CASES) if args.cases is None else [c.strip() for c in args.cases.split(";")]
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {list(CASES)}")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table: Path = args.out
    rows = _read_rows(table) if table.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        data = _data(Path(args.data or tmp), args.preset)
        sizes = f"{len(data[1])} training / {len(data[3])} test images at {data[4]} px"
        for label in chosen:
            case, lr = CASES[label]
            start = time.perf_counter()
            scores = _train(case, lr, data, args.epochs, args.seed)
            last, best = scores[-1], max(scores, key=lambda s: s[1])
            seconds = f"{time.perf_counter() - start:.0f}"
            note = f"{stamp}, {platform.machine()}, {args.threads} threads, seed {args.seed}, {args.epochs} epochs"
            rows[label] = [
                f"{last[0]:.3f}",
                f"{last[1]:.3f}",
                f"{best[1]:.3f}",
                seconds,
                note + (f"; {args.note}" if args.note else ""),
            ]
            print(f"{label}: last acc {last[0]:.3f} QWK {last[1]:.3f}; best QWK {best[1]:.3f}", flush=True)
    lines = [
        "# Supervised grading ceilings of the image-text recipe's encoders (cpu)",
        "",
        f"fundus-mm {args.preset} data: {sizes}, five DR grades (chance accuracy "
        "about 0.24, QWK 0). Supervised cross-entropy from random init; `python -m benchmarks.vit_grading` "
        "(`--cases` re-measures some rows). Seconds are comparable only between rows measured together.",
        "",
        "| encoder | test acc (last epoch) | test QWK (last epoch) | best QWK over epochs | seconds | measured |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {label} | " + " | ".join(rows[label]) + " |" for label in CASES if label in rows]
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join(lines) + "\n")
    print(table.read_text())


def _read_rows(table: Path) -> dict[str, list[str]]:
    """The rows of an earlier table by case label (a table without the measured column gets its header's date)."""
    text = table.read_text()
    header = next((line for line in text.splitlines() if line.startswith("20")), "")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in CASES:
            if len(cells) == 5:
                cells.append(header.split(". fundus-mm")[0].strip())
            rows[cells[0]] = cells[1:]
    return rows


if __name__ == "__main__":
    main()
