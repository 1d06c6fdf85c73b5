"""The mirror-retrieval recipe's metric losses: gathering under DDP and refused margins."""

import math

import pytest

from qualcl.losses import CircleLoss, FineTripletLoss
from qualcl.recipes.mirror_retrieval.config import TrainConfig
from qualcl.recipes.mirror_retrieval.modules import build_metric_loss


def test_circle_and_fine_triplet_gather_under_ddp():
    circle = build_metric_loss(TrainConfig(metric_loss="circle", margin=0.3, gamma=16.0))
    assert isinstance(circle, CircleLoss) and circle.gather_distributed and (circle.m, circle.gamma) == (0.3, 16.0)
    fine = build_metric_loss(TrainConfig(metric_loss="fine_triplet", margin=0.3, gamma=16.0))
    assert isinstance(fine, FineTripletLoss) and fine.gather_distributed and (fine.margin, fine.scale) == (0.3, 16.0)


@pytest.mark.parametrize("margin", [-0.1, math.nan])
def test_a_negative_triplet_margin_is_refused(margin):
    with pytest.raises(ValueError, match="train.triplet_margin must be >= 0"):
        build_metric_loss(TrainConfig(metric_loss="triplet", triplet_margin=margin))
    assert build_metric_loss(TrainConfig(metric_loss="triplet", triplet_margin=0.0)) is not None
