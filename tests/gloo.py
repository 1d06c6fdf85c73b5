"""Run a function on several gloo processes on the CPU and collect what each rank returns (tests only)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, work: Callable[[], Any], port: int, world: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(work(), os.path.join(out_dir, f"rank{rank}.pt"))
        # No rank tears its group down while a peer may still be talking to it: gloo aborts the
        # process ("terminate called without an active exception") when that happens.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_on_ranks(work: Callable[[], Any], world: int, out_dir: Path) -> list[Any]:
    """``work()`` on each of ``world`` processes of one gloo group; returns every rank's result, by rank.

    ``work`` must be a module-level function (it is pickled into the spawned processes).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_entry, args=(work, port, world, str(out_dir)), nprocs=world, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]
