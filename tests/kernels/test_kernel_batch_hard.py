import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
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


PML_DISTANCES = {
    "cosine": CosineSimilarity,
    "euclidean": LpDistance,
    "euclidean_raw": lambda: LpDistance(normalize_embeddings=False),
}


@given(
    st.integers(2, 24),
    st.integers(1, 5),
    st.integers(2, 8),
    st.integers(0, 2**31 - 1),
    st.sampled_from(sorted(PML_DISTANCES)),
    st.booleans(),
)
def test_every_distance_equals_pml_batch_hard_miner(n, classes, d, seed, distance, with_ref):
    g = torch.Generator().manual_seed(seed)
    # rows of very different norms: the raw Euclidean distance ranks them unlike the cosine
    emb = torch.randn(n, d, generator=g, dtype=torch.float64) * (torch.rand(n, 1, generator=g, dtype=torch.float64) * 4)
    labels = torch.randint(0, classes, (n,), generator=g)
    ref = ref_labels = None
    if with_ref:
        ref = torch.randn(n + 3, d, generator=g, dtype=torch.float64) * 2
        ref_labels = torch.randint(0, classes, (n + 3,), generator=g)
    theirs = BatchHardMiner(distance=PML_DISTANCES[distance]())(emb, labels, ref, ref_labels)
    for impl in ("torch", "naive"):
        ours = batch_hard_triplets(emb, labels, ref, ref_labels, distance=distance, impl=impl, chunk_size=5)
        assert _sorted(ours) == _sorted(theirs)


def test_raw_euclidean_ranks_by_position_and_accepts_zero_rows():
    # anchor 0's negatives: row 2 points its way but lies far, row 3 lies near in another direction
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 0.2], [0.6, 0.5], [0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2])
    cosine = batch_hard_triplets(emb[:4], labels[:4])
    for distance in ("cosine", "euclidean"):
        assert _sorted(batch_hard_triplets(emb[:4], labels[:4], distance=distance)) == _sorted(cosine)
    raw = batch_hard_triplets(emb, labels, distance="euclidean_raw")  # the zero row is a point like any other
    assert (0, 1, 2) in _sorted(cosine) and (0, 1, 3) in _sorted(raw)
    assert _sorted(raw) == _sorted(BatchHardMiner(distance=LpDistance(normalize_embeddings=False))(emb, labels))


def test_distance_arguments_are_checked():
    emb, labels = torch.randn(5, 3), torch.tensor([0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="distance must be one of"):
        batch_hard_triplets(emb, labels, distance="manhattan")
    with pytest.raises(ValueError, match="normalize=False"):
        batch_hard_triplets(emb, labels, distance="euclidean", normalize=False)
    with pytest.raises(ValueError, match="all-zero"):
        batch_hard_triplets(torch.zeros(5, 3), labels, distance="euclidean")


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
