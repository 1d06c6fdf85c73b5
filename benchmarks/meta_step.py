"""Time one MKCNet training step of each kind for two backbones, in one run, and write a ratio table.

    python -m benchmarks.meta_step                 # CPU, 64-px images, batch 16, 2 threads
    python -m benchmarks.meta_step --size 256 --batch 4 --device cuda

Each case is the recipe's own step (``MkcnetTraining`` with its focal losses and
``MetaAuxiliaryOptimizer``): the Task Net pass, and the Meta Learner pass in each ``meta_mode``.
Cases are warmed up once, then timed interleaved (A, B, C, A, B, C, ...); the median is reported
with its ratio to ResNet-10's Task Net step. Results go to ``benchmarks/results/meta_step_<device>.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from qualcl.recipes.mkcnet import MkcnetTraining, ModelConfig, TrainConfig, build_meta_learner, build_task_net

RESULTS = Path(__file__).parent / "results"
MODES = ("second_order", "finite_difference", "first_order")


class _Optimizer:
    """What ``LightningModule.optimizers()`` hands out, for a module used outside a Trainer."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        self.optimizer.step()


def _module(backbone: str, mode: str, device: str) -> MkcnetTraining:
    config = ModelConfig(backbone=backbone)
    task = build_task_net(config, 3, 3, 3).to(device)
    meta = build_meta_learner(config, 3, 3, 3)
    assert meta is not None
    module = MkcnetTraining(task, meta.to(device), TrainConfig(meta_mode=mode), slice_length=config.slice_length)
    optimizers = [_Optimizer(o) for o in module.configure_optimizers()]
    module.optimizers = lambda: optimizers  # type: ignore[method-assign]
    module.manual_backward = lambda loss: loss.backward()  # type: ignore[method-assign]
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    return module


def _cases(backbone: str, size: int, batch: int, device: str) -> dict[str, Callable[[], None]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    d = torch.randint(0, 3, (batch,), generator=g).to(device)
    q = torch.randint(0, 3, (batch,), generator=g).to(device)
    cases: dict[str, Callable[[], None]] = {}
    task_module = _module(backbone, "second_order", device)
    cases[f"{backbone} Task Net pass"] = lambda: task_module.training_step(
        (images, d, q, q, torch.zeros(batch, dtype=torch.long)), 0
    )
    for mode in MODES:
        module = _module(backbone, mode, device)
        cases[f"{backbone} Meta Learner pass ({mode})"] = lambda module=module: module.training_step(
            (images, d, q, q, torch.ones(batch, dtype=torch.long)), 0
        )
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=["resnet10", "vgg16_bn"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases: dict[str, Callable[[], None]] = {}
    for backbone in args.backbones:
        cases.update(_cases(backbone, args.size, args.batch, args.device))

    def timed(fn: Callable[[], None]) -> float:
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for fn in cases.values():  # warm-up
        timed(fn)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians[next(iter(cases))]
    lines = [
        f"# MKCNet training steps ({args.device})",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, {platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads; {args.size}-px images, batch {args.batch}, N_d = N_q = 3, L = 5; median of "
        f"{args.repeats} interleaved repeats after one warm-up. Ratio: to the first row.",
        "",
        "| step | median (s) | ratio |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {m:.3f} | {m / reference:.1f}× |" for name, m in medians.items()]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"meta_step_{args.device}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
