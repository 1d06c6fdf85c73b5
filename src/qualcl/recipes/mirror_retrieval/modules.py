"""The retrieval training module: metric loss on descriptors, mirror reconstructions, grade BCE; validation mAP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl.distributed import gather_no_grad, gather_with_grad, is_distributed
from qualcl.evaluation import RetrievalIndex
from qualcl.kernels import batch_hard_triplets
from qualcl.losses import CircleLoss, FineTripletLoss
from qualcl.metrics import retrieval_metrics
from qualcl.recipes.mirror_retrieval.config import TrainConfig
from qualcl.recipes.mirror_retrieval.model import MirrorRetrievalNet
from qualcl.recipes.modules import History, RecipeModule, at_least_float32

__all__ = ["RetrievalTraining", "build_metric_loss"]

Batch = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


class _BatchHardTriplet(nn.Module):
    """pytorch-metric-learning's ``TripletMarginLoss`` (cosine similarity) on qualcl's batch-hard triplets.

    Under DDP every rank mines and averages over the descriptors of every rank (gathered with
    gradients, which return to their owners), as the other metric losses do with ``gather_distributed``.
    """

    def __init__(self, margin: float) -> None:
        super().__init__()
        if not margin >= 0:  # also NaN; a negative margin rewards negatives nearer than positives
            raise ValueError(f"train.triplet_margin must be >= 0, got {margin}")
        from pytorch_metric_learning.distances import CosineSimilarity
        from pytorch_metric_learning.losses import TripletMarginLoss

        self.loss = TripletMarginLoss(margin=margin, distance=CosineSimilarity())

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if is_distributed():
            embeddings, labels = gather_with_grad(embeddings)[0], gather_no_grad(labels)
        loss: Tensor = self.loss(embeddings, labels, indices_tuple=batch_hard_triplets(embeddings.detach(), labels))
        return loss


def build_metric_loss(config: TrainConfig) -> nn.Module | None:
    """The metric loss ``config.metric_loss`` names (``None`` for ``"none"``).

    Each of them gathers every rank's descriptors under DDP (``gather_distributed``), so a
    multi-process run optimises the one-process loss of the global batch.
    """
    if config.metric_loss == "circle":
        return CircleLoss(m=config.margin, gamma=config.gamma, aggregate=config.aggregate, gather_distributed=True)
    if config.metric_loss == "fine_triplet":
        return FineTripletLoss(
            margin=config.margin,
            scale=config.gamma,
            relevance=config.relevance,
            aggregate=config.aggregate,
            gather_distributed=True,
        )
    return _BatchHardTriplet(config.triplet_margin) if config.metric_loss == "triplet" else None


class RetrievalTraining(RecipeModule):
    r"""Training of :class:`MirrorRetrievalNet` (the public FundusDR code's objective, each term switchable).

    ``L = w_metric · L_metric(descriptor, grade) + w_rec · (MSE(rec_h, x_h) + MSE(rec_v, x_v))
    + w_cls · BCE(σ(logits), onehot(grade))``, Adam with a constant learning rate. Validation
    retrieves each validation image among the others (leave one out) and logs ``val/map`` (mAP@k
    normalised by the hits), which selects the best epoch.

    Args:
        net: The network.
        config: Optimisation settings.
        k: Retrieval cut-off of the validation metrics.
        num_grades: Grades (one-hot width of the BCE target).
    """

    history = History(
        curves={
            "loss": "total loss",
            "loss_metric": "metric loss",
            "loss_reconstruction": "reconstruction MSE",
            "loss_classifier": "BCE",
        },
        metrics={"val_map": "val mAP@k (leave one out)", "val_precision": "val P@k"},
        extra=("gem_p",),
        title="Retrieval training",
        metrics_label="mAP / P@k",
    )
    monitor = "map"

    def __init__(self, net: MirrorRetrievalNet, config: TrainConfig, *, k: int, num_grades: int = 5) -> None:
        super().__init__()
        self.net, self.config, self.k, self.num_grades = net, config, k, num_grades
        self.metric_loss = build_metric_loss(config)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over every parameter (the public code's settings by default)."""
        return torch.optim.Adam(
            self.parameters(), lr=self.config.lr, betas=(0.9, 0.999), weight_decay=self.config.weight_decay
        )

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One optimisation step on the weighted sum of the terms the configuration switches on."""
        images, flip_h, flip_v, grades, _ = batch
        out = self.net(images, flip_h, flip_v)
        terms: dict[str, Tensor] = {}
        if self.metric_loss is not None:
            terms["metric"] = self.metric_loss(at_least_float32(out.descriptor), grades)
        if out.reconstructions is not None and out.targets is not None:
            pairs = zip(out.reconstructions, out.targets, strict=True)
            terms["reconstruction"] = sum(
                (F.mse_loss(at_least_float32(r), at_least_float32(t)) for r, t in pairs),
                torch.zeros((), device=images.device),
            )
        if out.logits is not None:
            logits = at_least_float32(out.logits)
            target = F.one_hot(grades, self.num_grades).to(logits.dtype)
            terms["classifier"] = F.binary_cross_entropy_with_logits(logits, target)
        # each term weighted by train.<term>_weight
        loss = torch.stack([getattr(self.config, f"{name}_weight") * value for name, value in terms.items()]).sum()
        self.record(loss=loss, **{f"loss_{name}": value for name, value in terms.items()})
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Collect validation descriptors (deterministic mirrors)."""
        images, _, _, grades, _ = batch
        self.collect(descriptors=self.net(images).descriptor.float(), grades=grades)

    def validation_metrics(self, outputs: dict[str, Tensor]) -> dict[str, float]:
        """Leave-one-out mAP@k and P@k: each validation image retrieves among the others."""
        descriptors, grades = outputs["descriptors"], outputs["grades"]
        own = torch.arange(descriptors.shape[0])
        k = min(self.k, len(own) - 1)
        hits = RetrievalIndex(descriptors, grades).search(descriptors, k, exclude_index=own)
        # each item is left out of its own database: R_q and the ideal DCG do not count it
        metrics = retrieval_metrics(grades, grades, hits.indices, k, exclude_index=own)
        return {"map": metrics[f"map@{k}"], "precision": metrics[f"precision@{k}"]}

    def epoch_extras(self) -> dict[str, float]:
        """The learnt GeM exponent."""
        p = self.net.gem.p
        return {"gem_p": float(p.detach().reshape(-1)[0])} if isinstance(p, Tensor) else {}
