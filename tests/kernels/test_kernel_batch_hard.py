import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner

from qualcl.kernels import batch_hard_triplets


def _sorted(triplets):
    a, p, n = (t.tolist() for t in triplets)
    return sorted(zip(a, p, n, strict=True))


@given(st.integers(2, 24), st.integers(1, 5), st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_equals_pytorch_metric_learning_batch_hard_miner(n, classes, d, seed):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    theirs = BatchHardMiner(distance=CosineSimilarity())(emb, labels)
    for impl in ("torch", "naive"):
        assert _sorted(batch_hard_triplets(emb, labels, impl=impl, chunk_size=5)) == _sorted(theirs)


def test_reference_embeddings_and_pml_loss_interop():
    g = torch.Generator().manual_seed(0)
    emb, ref = torch.randn(10, 6, generator=g), torch.randn(15, 6, generator=g)
    labels, ref_labels = torch.arange(10) % 3, torch.arange(15) % 4
    ours = batch_hard_triplets(emb, labels, ref, ref_labels)
    theirs = BatchHardMiner(distance=CosineSimilarity())(emb, labels, ref, ref_labels)
    assert _sorted(ours) == _sorted(theirs)
    loss = TripletMarginLoss(distance=CosineSimilarity())(emb, labels, ours, ref, ref_labels)
    assert torch.isfinite(loss)


def test_anchors_without_positive_or_negative_are_left_out():
    emb = torch.randn(5, 3)
    anchors, _, _ = batch_hard_triplets(emb, torch.tensor([0, 0, 1, 2, 2]))
    assert sorted(anchors.tolist()) == [0, 1, 3, 4]
    assert batch_hard_triplets(emb, torch.zeros(5, dtype=torch.long))[0].numel() == 0


def test_bad_inputs_name_the_argument():
    emb = torch.randn(5, 3)
    with pytest.raises(ValueError, match="labels"):
        batch_hard_triplets(emb, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="ref_labels"):
        batch_hard_triplets(emb, torch.zeros(5, dtype=torch.long), ref_emb=emb)
    with pytest.raises(ValueError, match="ref_emb"):
        batch_hard_triplets(emb, torch.zeros(5, dtype=torch.long), emb[:, :2], torch.zeros(5, dtype=torch.long))


def test_triplets_feed_pml_triplet_margin_loss_with_any_distance():
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss

    g = torch.Generator().manual_seed(3)
    emb = torch.nn.functional.normalize(torch.randn(24, 8, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 4, (24,), generator=g)
    ours = batch_hard_triplets(emb, labels)
    theirs = BatchHardMiner(distance=CosineSimilarity())(emb, labels)
    for distance in (CosineSimilarity(), LpDistance()):  # on unit vectors the mined order is the same
        loss_fn = TripletMarginLoss(margin=0.1, distance=distance)
        torch.testing.assert_close(loss_fn(emb, labels, indices_tuple=ours), loss_fn(emb, labels, indices_tuple=theirs))
