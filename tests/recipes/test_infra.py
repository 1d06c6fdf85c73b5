from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qualcl.heads.projection import ProjectionHead
from qualcl.recipes.config import apply_overrides, config_from_dict, config_to_dict, load_config, save_config
from qualcl.recipes.run_folder import ModelCard, RunFolder, flatten_metrics


@dataclass
class Inner:
    lr: float = 0.1
    sizes: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    name: str = "x"
    epochs: int = 2
    inner: Inner = field(default_factory=Inner)
    maybe: float | None = None
    pairs: tuple[tuple[str, str], ...] = (("L", "H"),)


@given(
    st.text(max_size=8),
    st.integers(0, 10**6),
    st.floats(0, 1, exclude_min=True),  # a learning rate is > 0 (FIELD_BOUNDS)
    st.lists(st.integers(0, 9), max_size=4),
    st.none() | st.floats(0, 5),
)
def test_config_round_trips_through_yaml(tmp_path_factory, name, epochs, lr, sizes, maybe):
    config = Outer(name=name, epochs=epochs, inner=Inner(lr=lr, sizes=tuple(sizes)), maybe=maybe)
    path = save_config(config, tmp_path_factory.mktemp("cfg") / "config.yaml")
    assert load_config(Outer, path) == config
    assert config_from_dict(Outer, config_to_dict(config)) == config


def test_overrides_and_errors():
    config = apply_overrides(Outer(), ["inner.lr=0.5", "epochs=7", "maybe=1.5"])
    assert (config.inner.lr, config.epochs, config.maybe) == (0.5, 7, 1.5)
    with pytest.raises(ValueError, match="unknown key 'lrr'"):
        apply_overrides(Outer(), ["inner.lrr=1"])
    with pytest.raises(ValueError, match="key.sub=value"):
        apply_overrides(Outer(), ["epochs"])
    with pytest.raises(ValueError, match=r"config.epochs must be int"):
        config_from_dict(Outer, {"epochs": "many"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bogus'\]"):
        config_from_dict(Outer, {"bogus": 1})


def test_run_folder_weights_metrics_stages(tmp_path):
    run = RunFolder(tmp_path / "run")
    net = torch.nn.Linear(3, 2)
    run.save_weights(net, "encoder")
    other = torch.nn.Linear(3, 2)
    run.load_weights(other, "encoder")
    assert torch.equal(other.weight, net.weight)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        run.load_weights(other, "missing")
    run.write_metrics({"test": {"qwk": 0.5, "n": 3}, "note": "text"})
    assert (run.root / "metrics.csv").read_text().splitlines() == ["name,value", "test/n,3", "test/qwk,0.5"]
    assert not run.stage_done("pretrain")
    run.mark_done("pretrain", steps=10)
    assert run.stage_done("pretrain")
    assert run.stage_info("pretrain")["steps"] == 10
    for step in range(5):
        run.append_history("pretrain", {"step": step, "loss": 1.0 / (step + 1)})
    run.truncate_history("pretrain", keep_below=3)
    assert [r["step"] for r in run.read_history("pretrain")] == [0, 1, 2]
    card = run.write_model_card(ModelCard("t", "p", "body", {"AUC": 0.5}, "| table |", ["missing.png"]))
    text = card.read_text()
    assert "**AUC** 0.500" in text and "| table |" in text and "missing.png" not in text


def test_flatten_metrics():
    assert flatten_metrics({"a": {"b": 1, "c": {"d": 2.5}}, "e": "x", "f": True}) == {
        "a/b": 1.0,
        "a/c/d": 2.5,
    }


def test_projection_head():
    head = ProjectionHead((8, 8, 4), batch_norm=True)
    out = head(torch.randn(5, 8))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    assert ProjectionHead((8, 3), normalize=False)(torch.randn(2, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match="dims"):
        ProjectionHead((8,))


@given(st.lists(st.integers(1, 12), min_size=2, max_size=4), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_projection_head_matches_a_float64_loop_reference(dims, n, seed):
    torch.manual_seed(seed)
    head = ProjectionHead(dims).double()
    x = torch.randn(n, dims[0], dtype=torch.float64)
    out = x
    linears = [m for m in head.net if isinstance(m, torch.nn.Linear)]
    for i, layer in enumerate(linears):
        out = out @ layer.weight.T + layer.bias
        if i < len(linears) - 1:
            out = out.clamp_min(0)
    want = out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
    torch.testing.assert_close(head(x), want)


def test_lightning_litlogger_tip_is_filtered_but_other_info_is_not():
    import logging

    import qualcl.recipes.trainer  # noqa: F401  (installs the filter)

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")

    def record(message: str) -> logging.LogRecord:
        return logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, None, None)

    assert not logger.filter(record("💡 Tip: try installing [litlogger](https://pypi.org/project/litlogger/)"))
    assert not logger.filter(record("GPU available: False, used: False"))  # a banner: one qualcl line per stage instead
    assert logger.filter(record("Restoring the best model weights"))  # other information passes


def test_image_tables_concatenate_and_refuse_mismatches():
    from qualcl.data import ImageTable

    a = ImageTable(
        torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
        torch.tensor([0, 1]),
        torch.tensor([0, 1]),
        ("Good", "Bad"),
        patient=["p", "q"],
        codes={"x": torch.tensor([5, 6]), "y": torch.tensor([1, 1])},
    )
    b = ImageTable(
        torch.ones(1, 3, 4, 4, dtype=torch.uint8),
        torch.tensor([1]),
        torch.tensor([0]),
        ("Good", "Bad"),
        codes={"x": torch.tensor([7])},
    )
    both = ImageTable.concat([a, b])
    assert both.label.tolist() == [0, 1, 1] and both.quality.tolist() == [0, 1, 0]
    assert both.patient is None  # b has no patients: the column cannot be kept
    assert set(both.codes) == {"x"} and both.codes["x"].tolist() == [5, 6, 7]
    assert torch.equal(both.images[2], b.images[0])
    with pytest.raises(ValueError, match="quality_names"):
        ImageTable.concat([a, ImageTable(b.images, b.label, b.quality, ("HQ", "LQ"))])
    bigger = torch.zeros(1, 3, 5, 5, dtype=torch.uint8)
    with pytest.raises(ValueError, match="image shape"):
        ImageTable.concat([a, ImageTable(bigger, b.label, b.quality, ("Good", "Bad"))])
    with pytest.raises(ValueError, match="at least one"):
        ImageTable.concat([])


def test_only_the_writing_rank_reads_the_history_at_a_checkpoint(tmp_path):
    # under DDP rank 0 appends history rows while every rank saves a checkpoint: a rank that does not write the
    # folder must not read the file (it could meet a half-written row), and its checkpoint dict is not saved
    from qualcl.recipes.callbacks import HISTORY_ROWS, HistoryWriter

    class Module:
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []

    writer_rank = RunFolder(tmp_path / "run")
    writer_rank.append_history("train", {"step": 0.0, "loss": 1.5})
    with (tmp_path / "run" / "history" / "train.csv").open("a") as handle:
        handle.write("1.0,1e")  # a row rank 0 is writing right now
    other, saved = {}, {}
    HistoryWriter(RunFolder(tmp_path / "run", writable=False), "train", "rows").on_save_checkpoint(
        None, Module(), other
    )
    assert HISTORY_ROWS not in other
    with pytest.raises(ValueError, match="could not convert"):  # what the other rank met before
        HistoryWriter(writer_rank, "train", "rows").on_save_checkpoint(None, Module(), saved)
