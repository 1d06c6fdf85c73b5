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


def test_siglip_refuses_class_level_positives(tmp_path):
    overrides = ["model.contrastive_loss=siglip", "train.class_level_positives=true", "train.epochs=1"]
    config = FUNDUS_MM.config("smoke", overrides=[*overrides, f"data.data_dir={tmp_path / 'data'}"])
    with pytest.raises(ValueError, match="class_level_positives"):
        FUNDUS_MM.run(config, tmp_path / "run")
