"""The collapse monitor callback: rows every N steps, a plot, collapse told from health, training unchanged."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from qualcl.recipes.collapse import CollapseMonitor
from qualcl.recipes.run_folder import RunFolder

PROBE = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))


class _Tiny(L.LightningModule):
    def __init__(self, collapse: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16))
        self.collapse = collapse

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return z.mean(dim=1, keepdim=True).expand_as(z) + 1.0 if self.collapse else z

    def training_step(self, batch, batch_idx):
        return self.embed(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path, collapse: bool, every: int = 2):
    torch.manual_seed(0)
    run = RunFolder(tmp_path / ("collapsed" if collapse else "healthy"))
    module = _Tiny(collapse)
    monitor = CollapseMonitor(run, "pretrain", lambda m: (m.embed(PROBE), m.embed(PROBE + 0.01)), every=every)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 8)), batch_size=8)
    trainer = L.Trainer(
        max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[monitor]
    )
    trainer.fit(module, data)
    return run, module


def test_rows_every_n_steps_and_a_plot(tmp_path):
    run, module = _fit(tmp_path, collapse=False)
    rows = run.read_history("pretrain_collapse")
    assert [r["step"] for r in rows] == [0.0, 2.0, 4.0]
    assert {"effective_rank", "uniformity", "alignment"} <= set(rows[0])
    assert (run.root / "plots" / "pretrain_collapse.png").stat().st_size > 0
    assert module.training  # the probe restores the modes


def test_a_collapsed_embedding_is_told_from_a_healthy_one(tmp_path):
    healthy = _fit(tmp_path, collapse=False)[0].read_history("pretrain_collapse")[-1]
    collapsed = _fit(tmp_path, collapse=True)[0].read_history("pretrain_collapse")[-1]
    assert collapsed["effective_rank"] < 1.5 < healthy["effective_rank"]
    assert collapsed["uniformity"] > -0.01 > healthy["uniformity"]


def test_training_is_unchanged_by_the_probe(tmp_path):
    torch.manual_seed(0)
    plain = _Tiny(False)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 8)), batch_size=8)
    L.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(plain, data)
    _, monitored = _fit(tmp_path, collapse=False, every=1)
    for a, b in zip(plain.state_dict().values(), monitored.state_dict().values(), strict=True):
        assert torch.equal(a, b)
