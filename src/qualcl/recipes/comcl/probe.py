"""Frozen-encoder diagnostics of a finished CoMCL run: linear probes of class and quality, feature geometry.

Fine-tuning results mix what pre-training learned with what fine-tuning re-learns; these read the
pre-trained encoder alone (:mod:`qualcl.evaluation`), which is what the ablation needs to tell a
better pre-training from a lucky fine-tuning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from qualcl.data.table import ImageTable
from qualcl.evaluation import feature_geometry, linear_probe
from qualcl.metrics import grading_metrics, stratified_grading_metrics
from qualcl.models import build_encoder
from qualcl.recipes.comcl.config import ComclConfig
from qualcl.recipes.comcl.data import GradingDataset, image_levels, low_quality
from qualcl.recipes.config import load_config
from qualcl.recipes.run_folder import RunFolder

__all__ = ["encode", "pretrained_encoder", "probe_encoder", "probe_run"]


@torch.no_grad()
def encode(encoder: nn.Module, data: ImageTable, batch_size: int = 64) -> Tensor:
    """``(N, D)`` float64 features of ``data``'s whole images (normalised as for fine-tuning, no flips)."""
    was_training = encoder.training
    encoder.eval()
    loader = DataLoader(GradingDataset(data, train=False), batch_size=batch_size, shuffle=False)
    features = [encoder(images).double() for images, _, _ in loader]
    encoder.train(was_training)
    return torch.cat(features) if features else torch.zeros(0, 0, dtype=torch.float64)


def probe_encoder(encoder: nn.Module, num_classes: int, train: ImageTable, test: ImageTable) -> dict[str, Any]:
    """Linear probes of a frozen ``encoder`` (fitted on ``train``, scored on ``test``), and its test features' geometry.

    The class probe has ``num_classes`` classes; the encoder's mode is restored. A pre-training that
    separates lesions from degradations (CoMCL's ``(L, LQ_L)`` pair) puts quality into the features,
    which the quality probe reads; a grading head may or may not profit.

    Returns:
        ``{"grade": stratified metrics of a linear probe of the class, "low_quality": grading metrics
        of a linear probe of low vs high quality (``qwk`` = ``kappa`` for two classes), "geometry":
        feature_geometry(test features, test levels)}``.
    """
    train_features, test_features = encode(encoder, train), encode(encoder, test)
    preds = linear_probe(train_features, train.label, test_features, num_classes)
    lq = linear_probe(train_features, low_quality(train).long(), test_features, 2, weight_decay=1e-3)
    return {
        "grade": stratified_grading_metrics(preds, test.label, num_classes, test.quality, test.quality_names),
        "low_quality": grading_metrics(lq, low_quality(test).long(), 2),
        "geometry": feature_geometry(test_features, image_levels(test)),
    }


def pretrained_encoder(run: RunFolder, config: ComclConfig) -> nn.Module:
    """A run's pre-trained encoder; the baseline's (no pre-training): the initialisation ``config.seed`` gives."""
    L.seed_everything(config.seed, verbose=False)
    encoder = build_encoder(config.backbone, pretrained=config.pretrained)
    if config.pretrain.method != "none":
        run.load_weights(encoder, "pretrain_encoder")
    return encoder


def probe_run(folder: str | Path, train: ImageTable, test: ImageTable) -> dict[str, Any]:
    """:func:`probe_encoder` of a run folder's :func:`pretrained_encoder` (``probe=true`` runs write it too)."""
    run = RunFolder(folder, writable=False)
    config = load_config(ComclConfig, run.path("config.yaml"))
    return probe_encoder(pretrained_encoder(run, config), config.num_classes, train, test)
