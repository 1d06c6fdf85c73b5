"""RunContext.predict on 2 gloo ranks: every item once, in dataset order, the same result on every rank."""

from __future__ import annotations

import tempfile

import pytest
import torch
from torch.utils.data import TensorDataset

from gloo import run_on_ranks

pytestmark = pytest.mark.distributed


def _work() -> dict[str, torch.Tensor]:
    from qualcl.recipes.comcl import COMCL
    from qualcl.recipes.driver import RunContext

    items = torch.arange(11, dtype=torch.float32).view(11, 1).repeat(1, 2)
    dataset = TensorDataset(items, torch.arange(11))
    with tempfile.TemporaryDirectory() as folder:
        ctx = RunContext(COMCL.config("smoke", overrides=["trainer.accelerator=cpu"]), folder)
        out = ctx.predict(lambda batch: {"x": batch[0] * 2, "index": batch[1]}, dataset, batch_size=3)
        writable = torch.tensor(ctx.run.writable)
    return {**out, "writable": writable}


def test_predict_gathers_every_item_in_order(tmp_path):
    results = run_on_ranks(_work, 2, tmp_path)
    for rank, out in enumerate(results):
        assert out["index"].tolist() == list(range(11))
        torch.testing.assert_close(out["x"], 2 * torch.arange(11, dtype=torch.float32).view(11, 1).repeat(1, 2))
        assert bool(out["writable"]) == (rank == 0)  # only global rank 0 writes the run folder
