"""Time one MKCNet training step of each kind for two backbones, in one run, and write a ratio table.

    python -m benchmarks.meta_step                 # CPU, 64-px images, batch 16, 2 threads
    python -m benchmarks.meta_step --size 256 --batch 4 --device cuda

Each case is the recipe's own step (``MkcnetTraining`` with its focal losses and
``MetaAuxiliaryOptimizer``): the Task Net pass, and the Meta Learner pass in each ``meta_mode``.
Cases are warmed up once, then timed interleaved (A, B, C, A, B, C, ...); the median is reported
with its ratio to ResNet-10's Task Net step. Results go to ``benchmarks/results/meta_step_<device>.md``
(``--out``: another folder).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qualcl.optim import MetaMode
from qualcl.recipes.mkcnet import MkcnetTraining, ModelConfig, TrainConfig, build_meta_learner, build_task_net

RESULTS = Path(__file__).parent / "results"
MODES: tuple[MetaMode, ...] = ("second_order", "finite_difference", "first_order")


class _Optimizer:
    """What ``LightningModule.optimizers()`` hands out, for a module used outside a Trainer."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        self.optimizer.step()


class _Standalone(MkcnetTraining):
    """The recipe's module outside a Trainer: its optimisers wrapped as a Trainer would, no logging."""

    def attach(self) -> MkcnetTraining:
        self._wrapped = [_Optimizer(o) for o in self.configure_optimizers()]
        return self

    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        return self._wrapped

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward()  # type: ignore[no-untyped-call]

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass


def _module(backbone: str, mode: MetaMode, device: str) -> MkcnetTraining:
    config = ModelConfig(backbone=backbone)
    task = build_task_net(config, 3, 3, 3).to(device)
    meta = build_meta_learner(config, 3, 3, 3)
    assert meta is not None
    module = _Standalone(task, meta.to(device), TrainConfig(meta_mode=mode), slice_length=config.slice_length)
    return module.attach()


def _step(module: MkcnetTraining, batch: tuple[Tensor, Tensor, Tensor, Tensor, Tensor]) -> Callable[[], object]:
    return lambda: module.training_step(batch, 0)


def _cases(backbone: str, size: int, batch: int, device: str) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    d = torch.randint(0, 3, (batch,), generator=g).to(device)
    q = torch.randint(0, 3, (batch,), generator=g).to(device)
    cases: dict[str, Callable[[], object]] = {}
    task_module = _module(backbone, "second_order", device)
    cases[f"{backbone} Task Net pass"] = _step(task_module, (images, d, q, q, torch.zeros(batch, dtype=torch.long)))
    for mode in MODES:
        module = _module(backbone, mode, device)
        meta_pass = (images, d, q, q, torch.ones(batch, dtype=torch.long))
        cases[f"{backbone} Meta Learner pass ({mode})"] = _step(module, meta_pass)
    return cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=["resnet10", "vgg16_bn"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default benchmarks/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases: dict[str, Callable[[], object]] = {}
    for backbone in args.backbones:
        cases.update(_cases(backbone, args.size, args.batch, args.device))

    def timed(fn: Callable[[], object]) -> float:
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"meta_step_{args.device}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
