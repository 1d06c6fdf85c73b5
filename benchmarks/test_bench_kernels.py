"""pytest-benchmark micro-benchmarks of each kernel and its naive counterpart (small sizes).

Not collected by the default test run (``testpaths = ["tests"]``). Run::

    python -m pytest benchmarks --benchmark-enable
    python -m pytest benchmarks --benchmark-enable --benchmark-group-by=param:group

Every implementation of a group runs the same computation from ``benchmarks.cases``; the full-size
comparison with peak memory and ratio tables is ``python -m benchmarks.compare``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.cases import GROUPS, Case, Group

SMALL = {"cpu": 1024, "cuda": 8192}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PARAMS = [
    pytest.param(group, case, device, id=f"{device}-{group.key}-{case.name}")
    for device in DEVICES
    for group in GROUPS
    for case in group.cases
    if device in case.devices
]


@pytest.mark.parametrize(("group", "case", "device"), PARAMS)
def test_kernel(benchmark: BenchmarkFixture, group: Group, case: Case, device: str) -> None:
    shape = group.cpu if device == "cpu" else group.cuda
    size = SMALL[device]
    shape = replace(shape, n=min(shape.n, size), m=min(shape.m, size))
    if device == "cpu":
        torch.set_num_threads(2)
    run = case.build(shape)
    benchmark.group = f"{device}: {group.title}"
    benchmark.extra_info.update(n=shape.n, m=shape.m, d=shape.d, dtype=shape.dtype, role=case.role)

    def step() -> None:
        run()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)  # type: ignore[no-untyped-call]
