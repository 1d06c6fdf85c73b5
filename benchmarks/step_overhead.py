"""One CoMCL pre-training step and one fine-tuning step: the recipe skeleton against a hand-written loop.

    python -m benchmarks.step_overhead            # CPU, 2 threads, the default preset's shapes
    python -m benchmarks.step_overhead --quick    # fewer steps (a smoke run, not for the record)
    python -m benchmarks.step_overhead --steps 1 --warmup 1 --per-level 1 --batch 2 --image-size 32 --out /tmp/b
                                                  # tiny shapes: a smoke check of the script itself

Both sides run the recipe's own LightningModule on the same in-memory batches (random images of
the default preset's shapes): the hand-written loop calls the module's augmentation, forward, loss,
``backward`` and ``AdamW.step`` directly; the skeleton runs ``make_trainer`` (Lightning, its
checkpoint callbacks, the step progress bar off, no logger) through ``RunContext.fit``. The time of
a step is the wall time between consecutive batch starts (data loading included), the median over
the measured steps after a warm-up. A second table measures the CPU settings the default preset
picked (``trainer.small_map_convs``, ``trainer.channels_last``) and the fine-tuning image size,
each on the hand-written loop. Results: ``benchmarks/results/step_overhead_cpu.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from qualcl.heads import ProjectionHead
from qualcl.losses import MultiLevelInfoNCE
from qualcl.models import build_encoder, unfold_small_convs
from qualcl.recipes.comcl import COMCL
from qualcl.recipes.comcl.data import PatchAugmentation
from qualcl.recipes.comcl.modules import ContrastivePretraining, GradingFineTuning
from qualcl.recipes.driver import RunContext
from qualcl.recipes.modules import RecipeModule
from qualcl.samplers import CosineCountSchedule, SelfPacedHardNegativeMiner

RESULTS = Path(__file__).parent / "results"
Step = ContrastivePretraining | GradingFineTuning
"""The modules whose steps are timed."""
M = TypeVar("M", bound=RecipeModule)


class _Batches(Dataset[Any]):
    """``count`` fixed batches (one item = one whole batch; the loader uses ``batch_size=None``)."""

    def __init__(self, make: Callable[[int], Any], count: int) -> None:
        self.batches = [make(i) for i in range(count)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Any:
        return self.batches[index]


def _patch_batch(per_level: int, patch: int) -> Callable[[int], Any]:
    augment = PatchAugmentation(patch, "light")

    def make(i: int) -> Any:
        g = torch.Generator().manual_seed(i)
        n = 4 * per_level
        views = [torch.randint(0, 256, (n, 3, patch, patch), generator=g, dtype=torch.uint8) for _ in range(2)]
        levels = torch.arange(4).repeat_interleave(per_level)
        params = [torch.stack([augment.color_params(g) for _ in range(n)]) for _ in range(2)]
        return views[0], views[1], levels, params[0], params[1]

    return make


def _image_batch(batch: int, size: int) -> Callable[[int], Any]:
    def make(i: int) -> Any:
        g = torch.Generator().manual_seed(i)
        images = torch.randn(batch, 3, size, size, generator=g)
        return images, torch.randint(0, 5, (batch,), generator=g), torch.zeros(batch, dtype=torch.long)

    return make


def _pretraining(per_level: int, patch: int, steps: int, *, unfold: bool, channels_last: bool) -> Step:
    torch.manual_seed(0)
    encoder = build_encoder("resnet10")
    miner = SelfPacedHardNegativeMiner(CosineCountSchedule(None, steps))
    module = ContrastivePretraining(
        encoder,
        ProjectionHead((512, 512, 128)),
        MultiLevelInfoNCE(temperature=0.07, miner=miner),
        lr=1e-3,
        weight_decay=5e-4,
        max_steps=steps,
        augment=PatchAugmentation(patch, "light"),
    )
    return _settings(module, unfold=unfold, channels_last=channels_last)


def _finetuning(epochs: int, *, unfold: bool, channels_last: bool) -> Step:
    torch.manual_seed(0)
    module = GradingFineTuning(build_encoder("resnet10"), 5, lr=1e-3, weight_decay=5e-4, epochs=epochs)
    return _settings(module, unfold=unfold, channels_last=channels_last)


def _settings(module: M, *, unfold: bool, channels_last: bool) -> M:
    if unfold:
        unfold_small_convs(module)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    return module


def _hand_loop(module: Step, loader: DataLoader[Any], warmup: int) -> list[float]:
    """The same step without Lightning: augmentation hook, training_step, backward, AdamW, scheduler."""
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]
    scheduler = scheduler["scheduler"] if isinstance(scheduler, dict) else scheduler
    module.train()
    times: list[float] = []
    start = time.perf_counter()
    for index, batch in enumerate(loader):
        batch = module.on_after_batch_transfer(batch, 0)
        loss = module.training_step(batch, index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        scheduler.step()
        now = time.perf_counter()
        if index >= warmup:
            times.append(now - start)
        start = now
    return times


class _StepTimer(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self.last: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if self.last is not None and trainer.global_step > self.warmup:
            self.times.append(now - self.last)
        self.last = now


def _skeleton(module: Step, loader: DataLoader[Any], steps: int, warmup: int) -> list[float]:
    """The same module through RunContext.fit (the recipes' trainer, checkpoints and callbacks)."""
    timer = _StepTimer(warmup)
    config = COMCL.config("default", overrides=["trainer.progress=false", "trainer.logger=none"])
    with tempfile.TemporaryDirectory() as folder:
        ctx = RunContext(config, folder, callbacks=[timer])
        ctx.fit("bench", module, loader, weights={}, max_steps=steps, every_n_train_steps=max(1, min(50, steps // 4)))
    return timer.times


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def _loader(make: Callable[[int], Any], count: int) -> DataLoader[Any]:
    return DataLoader(_Batches(make, count), batch_size=None, shuffle=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25, help="measured steps per case (after the warm-up steps)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per case (default 5, --quick 2)")
    parser.add_argument("--quick", action="store_true")
    shapes = parser.add_argument_group("smaller shapes than the default preset's (a smoke check, not for the record)")
    shapes.add_argument("--per-level", type=int, default=None, help="pre-training patch pairs per level")
    shapes.add_argument("--batch", type=int, default=None, help="fine-tuning images per batch")
    shapes.add_argument("--image-size", type=int, default=None, help="fine-tuning image side")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 6 if args.quick else args.steps
    warmup = args.warmup if args.warmup is not None else 2 if args.quick else 5
    total = steps + warmup + 1
    config = COMCL.config("default")
    per_level, patch = args.per_level or config.pretrain.per_level, config.pretrain.patch_size
    size, batch = args.image_size or config.data.image_size, args.batch or config.finetune.batch_size
    preset = config.pretrain.per_level, config.data.image_size, config.finetune.batch_size
    resized = (per_level, size, batch) != preset
    options = {"unfold": config.trainer.small_map_convs == "unfold", "channels_last": config.trainer.channels_last}

    rows = []
    cases: list[tuple[str, Callable[[], Step], Callable[[int], Any]]] = [
        (
            f"pre-training ({4 * per_level} patch pairs of {patch} px)",
            lambda: _pretraining(per_level, patch, total, **options),
            _patch_batch(per_level, patch),
        ),
        (
            f"fine-tuning ({batch} images of {size} px)",
            lambda: _finetuning(1, **options),
            _image_batch(batch, size),
        ),
    ]
    for name, build, make in cases:
        hand = _median_ms(_hand_loop(build(), _loader(make, total), warmup))
        skeleton = _median_ms(_skeleton(build(), _loader(make, total), total, warmup))
        rows.append((name, hand, skeleton))
        print(
            f"{name}: hand-written {hand:.0f} ms, skeleton {skeleton:.0f} ms ({skeleton / hand - 1:+.1%})", flush=True
        )

    variants = []
    for unfold in (False, True):
        for channels_last in (False, True):
            pre = _median_ms(
                _hand_loop(
                    _pretraining(per_level, patch, total, unfold=unfold, channels_last=channels_last),
                    _loader(_patch_batch(per_level, patch), total),
                    warmup,
                )
            )
            fine = {
                s: _median_ms(
                    _hand_loop(
                        _finetuning(1, unfold=unfold, channels_last=channels_last),
                        _loader(_image_batch(batch, s), total),
                        warmup,
                    )
                )
                for s in (size, 96)
            }
            variants.append((unfold, channels_last, pre, fine[size], fine[96]))
            print(f"unfold={unfold} channels_last={channels_last}: {pre:.0f} / {fine[size]:.0f} / {fine[96]:.0f} ms")

    base = variants[0]
    described = (
        "smaller shapes than the default preset's and its settings"
        if resized
        else "the default preset's shapes and settings"
    )
    lines = [
        "# CoMCL steps: the recipe skeleton against a hand-written loop",
        "",
        f"`python -m benchmarks.step_overhead`, {datetime.now(timezone.utc):%Y-%m-%d}, "
        f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
        f"lightning {L.__version__}. Median wall time per step over {steps} steps after {warmup} warm-up "
        f"steps, data loading included, {described} "
        f"(`small_map_convs={config.trainer.small_map_convs}`, `channels_last={config.trainer.channels_last}`).",
        "",
        "| step | hand-written loop | skeleton (`RunContext.fit`) | overhead |",
        "|---|---|---|---|",
        *(f"| {n} | {h:.0f} ms | {s:.0f} ms | {s / h - 1:+.1%} |" for n, h, s in rows),
        "",
        "## CPU settings of the default preset (hand-written loop)",
        "",
        f"| `small_map_convs` | `channels_last` | pre-training step | fine-tuning step, {size} px | "
        "fine-tuning step, 96 px |",
        "|---|---|---|---|---|",
        *(
            f"| {'unfold' if u else 'native'} | {c} | {p:.0f} ms ({p / base[2]:.2f}×) | "
            f"{f:.0f} ms ({f / base[3]:.2f}×) | {f96:.0f} ms ({f96 / base[4]:.2f}×) |"
            for u, c, p, f, f96 in variants
        ),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("step_overhead_cpu_quick.md" if args.quick or resized else "step_overhead_cpu.md")
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
