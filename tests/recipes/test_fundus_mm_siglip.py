"""The image-text recipe with SigLIP as its contrastive objective (model.contrastive_loss=siglip)."""

from __future__ import annotations

import pytest

from qualcl.recipes.fundus_mm.recipe import FUNDUS_MM


def test_siglip_smoke_run(tmp_path):
    overrides = ["model.contrastive_loss=siglip", "train.epochs=1", "trainer.logger=none"]
    config = FUNDUS_MM.config("smoke", overrides=[*overrides, f"data.data_dir={tmp_path / 'data'}"])
    metrics = FUNDUS_MM.run(config, tmp_path / "run")
    assert "test" in metrics
    history = (tmp_path / "run" / "history").glob("pretrain*.csv")
    assert any(path.read_text().strip() for path in history)


def test_siglip_refuses_class_level_positives():
    """Refused when the config is built, before anything is written: when asked for, and by a real dataset's default."""
    siglip = "model.contrastive_loss=siglip"
    with pytest.raises(ValueError, match="class_level_positives"):
        FUNDUS_MM.config("smoke", overrides=[siglip, "train.class_level_positives=true"])
    with pytest.raises(ValueError, match="class_level_positives"):
        FUNDUS_MM.config("smoke", dataset="aptos", overrides=[siglip])
    assert FUNDUS_MM.config("smoke", dataset="aptos", overrides=[siglip, "train.class_level_positives=false"])
