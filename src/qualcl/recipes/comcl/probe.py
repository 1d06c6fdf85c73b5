"""Linear probe on frozen encoder features: how much class information pre-training put there.

Fine-tuning results mix what pre-training learned with what fine-tuning re-learns, and at
CPU scale they vary a lot between seeds. A linear probe (multinomial logistic regression on the
frozen, standardised features of the whole images, fitted to convergence with L-BFGS in float64)
is deterministic given the encoder, so it isolates the representation — the measure CoMCL's
ablations need to tell a better pre-training from a lucky fine-tuning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from qualcl.data.levels import split_levels
from qualcl.metrics import grading_metrics, stratified_grading_metrics
from qualcl.recipes.backbones import build_backbone
from qualcl.recipes.comcl.config import ComclConfig
from qualcl.recipes.comcl.data import FundusImages, GradingDataset
from qualcl.recipes.config import load_config
from qualcl.recipes.run_folder import RunFolder

__all__ = ["LinearProbe", "encode", "feature_geometry", "linear_probe", "probe_run", "quality_probe"]


@torch.no_grad()
def encode(encoder: nn.Module, data: FundusImages, batch_size: int = 64) -> Tensor:
    """``(N, D)`` float64 features of ``data``'s whole images (normalised as for fine-tuning, no flips)."""
    was_training = encoder.training
    encoder.eval()
    loader = DataLoader(GradingDataset(data, train=False), batch_size=batch_size, shuffle=False)
    features = [encoder(images).double() for images, _, _ in loader]
    encoder.train(was_training)
    return torch.cat(features) if features else torch.zeros(0, 0, dtype=torch.float64)


class LinearProbe:
    """Multinomial logistic regression on standardised features, fitted with full-batch L-BFGS.

    Minimises ``mean_i CE(W x_i + b, y_i) + weight_decay · ||W||²`` (the bias is not penalised), the
    objective of scikit-learn's multinomial ``LogisticRegression(C=1 / (2 · weight_decay · N))`` for
    three or more classes (for two, sklearn's single logit ``w`` matches ``C=1 / (weight_decay · N)``).
    The start is zero, so the fit is deterministic.

    Args:
        num_classes: Number of classes ``C``.
        weight_decay: L2 penalty on ``W``.
        max_iter: L-BFGS iterations.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [10.0], [11.0]], dtype=torch.float64)
        >>> probe = LinearProbe(2).fit(x, torch.tensor([0, 0, 1, 1]))
        >>> probe.predict(torch.tensor([[0.5], [10.5]], dtype=torch.float64)).tolist()
        [0, 1]
    """

    def __init__(self, num_classes: int, *, weight_decay: float = 1e-3, max_iter: int = 500) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.num_classes = num_classes
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None

    def _standardise(self, features: Tensor) -> Tensor:
        if self.mean is None or self.std is None:
            raise RuntimeError("call fit() first")
        return (features.double() - self.mean) / self.std

    def fit(self, features: Tensor, labels: Tensor) -> LinearProbe:
        """Fit on ``(N, D)`` features and ``(N,)`` class ids; returns ``self``."""
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise ValueError(
                f"features must be (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}"
            )
        if features.shape[0] == 0:
            raise ValueError("cannot fit a probe on zero samples")
        x = features.double()
        self.mean = x.mean(dim=0)
        self.std = x.std(dim=0, unbiased=False).clamp_min(1e-12)
        x = self._standardise(x)
        y = labels.long()
        weight = torch.zeros(x.shape[1], self.num_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(self.num_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=1e-10,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, y) + self.weight_decay * weight.pow(2).sum()
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        optimizer.step(closure)  # type: ignore[no-untyped-call]
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def logits(self, features: Tensor) -> Tensor:
        """``(N, C)`` float64 logits."""
        if self.weight is None or self.bias is None:
            raise RuntimeError("call fit() first")
        x = self._standardise(features)
        return x @ self.weight + self.bias

    def predict(self, features: Tensor) -> Tensor:
        """``(N,)`` predicted class ids."""
        return self.logits(features).argmax(dim=1)


def linear_probe(
    train_features: Tensor,
    train: FundusImages,
    test_features: Tensor,
    test: FundusImages,
    num_classes: int,
    *,
    weight_decay: float = 1e-3,
) -> dict[str, dict[str, float]]:
    """Fit a :class:`LinearProbe` of the class on ``(N_train, D)`` features of ``train``, score it on ``test``'s.

    Returns:
        :func:`qualcl.metrics.stratified_grading_metrics` of the test predictions (QWK, kappa,
        accuracy, macro F1, overall and per quality level).
    """
    probe = LinearProbe(num_classes, weight_decay=weight_decay).fit(train_features, train.grade)
    preds = probe.predict(test_features)
    return stratified_grading_metrics(preds, test.grade, num_classes, test.quality, test.quality_names)


def quality_probe(
    train_features: Tensor,
    train: FundusImages,
    test_features: Tensor,
    test: FundusImages,
    *,
    weight_decay: float = 1e-3,
) -> dict[str, float]:
    """How linearly readable image quality (low vs high) is from ``(N, D)`` features.

    A pre-training that separates lesions from degradations (CoMCL's ``(L, LQ_L)`` pair) puts
    quality into the features; a grading head may or may not profit from that.

    Returns:
        :func:`qualcl.metrics.grading_metrics` of the binary LQ-vs-HQ predictions on ``test``
        (``qwk`` = ``kappa`` for two classes).
    """
    probe = LinearProbe(2, weight_decay=weight_decay).fit(train_features, (train.quality > 0).long())
    return grading_metrics(probe.predict(test_features), (test.quality > 0).long(), 2)


def feature_geometry(features: Tensor, levels: Tensor) -> dict[str, float]:
    """Collapse diagnostics of ``(N, D)`` features grouped by ``(N,)`` level ids.

    Features are centred on their mean first (ReLU features are all positive, which makes raw
    cosines uninformative).

    * ``effective_rank``: ``exp(H(p))`` with ``p`` the normalised singular values of the centred
      features (Roy & Vetterli 2007; RankMe, Garrido et al. 2023). ``D`` for isotropic features, 1 for
      features on a line.
    * ``within_level_cosine`` / ``between_level_cosine``: mean cosine of the centred features over
      pairs of distinct images of the same / of different levels. A loss without same-level
      negatives (CoMCL's Eq. 1) is minimised by features that encode the level and little else:
      within → 1.

    Example:
        >>> import torch
        >>> levels = torch.tensor([0, 0, 1, 1])
        >>> out = feature_geometry(torch.eye(2, dtype=torch.float64)[levels], levels)
        >>> round(out["within_level_cosine"], 3), round(out["between_level_cosine"], 3)
        (1.0, -1.0)
    """
    if features.ndim != 2 or levels.shape != (features.shape[0],):
        raise ValueError(
            f"features must be (N, D) and levels (N,), got {tuple(features.shape)} and {tuple(levels.shape)}"
        )
    if features.shape[0] < 2:
        raise ValueError("feature_geometry needs at least two samples")
    x = features.double() - features.double().mean(dim=0)
    singular = torch.linalg.svdvals(x)
    p = singular / singular.sum().clamp_min(1e-300)
    p = p[p > 0]
    rank = float(torch.exp(-(p * p.log()).sum()))
    unit = F.normalize(x, dim=1)
    cosine = unit @ unit.T
    same = levels[:, None] == levels[None, :]
    off_diagonal = ~torch.eye(len(levels), dtype=torch.bool)
    within, between = cosine[same & off_diagonal], cosine[~same]
    nan = float("nan")
    return {
        "effective_rank": rank,
        "within_level_cosine": float(within.mean()) if within.numel() else nan,
        "between_level_cosine": float(between.mean()) if between.numel() else nan,
    }


def probe_run(folder: str | Path, train: FundusImages, test: FundusImages) -> dict[str, Any]:
    """Linear probes of a finished CoMCL run's pre-trained encoder, cached in ``folder/probe.json``.

    Runs without pre-training (the baseline) are probed with the randomly initialised encoder that
    ``config.seed`` gives, the reference every pre-training should beat.

    Args:
        folder: Run folder written by :func:`~qualcl.recipes.comcl.run_comcl`.
        train: Its training images (probe fit).
        test: Its test images.

    Returns:
        ``{"grade": linear_probe(...), "low_quality": quality_probe(...), "geometry":
        feature_geometry(test features, test levels)}``.
    """
    run = RunFolder(folder)
    cached = run.path("probe.json")
    if cached.is_file():
        result: dict[str, Any] = json.loads(cached.read_text())
        if {"grade", "low_quality", "geometry"} <= set(result):
            return result
    config = load_config(ComclConfig, run.path("config.yaml"))
    L.seed_everything(config.seed, verbose=False)
    encoder = build_backbone(config.backbone)
    if config.pretrain.method != "none":
        run.load_weights(encoder, "pretrain_encoder")
    train_features, test_features = encode(encoder, train), encode(encoder, test)
    result = {
        "grade": linear_probe(train_features, train, test_features, test, config.num_classes),
        "low_quality": quality_probe(train_features, train, test_features, test),
        "geometry": feature_geometry(test_features, split_levels(test.grade, test.quality)),
    }
    cached.write_text(json.dumps(result, indent=2))
    return result
