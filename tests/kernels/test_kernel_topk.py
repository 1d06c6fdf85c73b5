from unittest import mock

import kernel_reference as ref
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.kernels import topk_similarity


@pytest.fixture(autouse=True, scope="module", params=["kernel", "torch selection"])
def selection(request):
    """Every test runs with the compiled CPU selection kernel (where it builds) and with the torch path."""
    if request.param == "kernel":
        yield request.param
        return
    with mock.patch("qualcl.kernels._topk_torch.native_available", return_value=False):
        yield request.param


def _ints(seed: int, *shape: int) -> torch.Tensor:
    """Small-integer embeddings: dot products are exact in float32, so ties are exact on every path."""
    return torch.randint(-2, 3, shape, generator=torch.Generator().manual_seed(seed)).float()


def _keep(n, m, mask, labels, candidate_labels, relation, exclude):
    keep = torch.ones(n, m, dtype=torch.bool) if mask is None else mask.clone()
    if labels is not None:
        same = labels[:, None] == candidate_labels[None, :]
        keep &= ~same if relation == "different" else same
    if exclude is not None:
        for i, j in enumerate(exclude.tolist()):
            if j >= 0:
                keep[i, j] = False
    return keep


sizes = st.tuples(st.integers(1, 8), st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**31 - 1))


@given(sizes, st.booleans(), st.booleans(), st.sampled_from(["different", "same"]), st.booleans(), st.data())
def test_streaming_matches_loop_reference_exactly_with_ties(size, use_mask, use_labels, relation, largest, data):
    n, m, d, seed = size
    q, c = _ints(seed, n, d), _ints(seed + 1, m, d)
    g = torch.Generator().manual_seed(seed + 2)
    mask = torch.rand(n, m, generator=g) > 0.3 if use_mask else None
    labels = torch.randint(0, 3, (n,), generator=g) if use_labels else None
    column_labels = torch.randint(0, 3, (m,), generator=g) if use_labels else None
    exclude = torch.randint(-1, m, (n,), generator=g) if data.draw(st.booleans()) else None
    k = data.draw(st.integers(1, m))
    chunk, column_chunk = data.draw(st.none() | st.integers(1, n + 1)), data.draw(st.none() | st.integers(1, m + 1))
    keep = _keep(n, m, mask, labels, column_labels, relation, exclude)
    want_values, want_indices = ref.topk(q, c, k, keep=keep, largest=largest, normalize=False)
    for impl, extra in (("naive", {}), ("torch", {"chunk_size": chunk, "column_chunk_size": column_chunk})):
        values, indices = topk_similarity(
            q, c, k, mask, labels=labels, candidate_labels=column_labels, label_relation=relation,
            exclude_index=exclude, largest=largest, normalize=False, impl=impl, **extra,
        )  # fmt: skip
        assert indices.tolist() == want_indices, impl
        assert values.tolist() == want_values, impl


@given(st.integers(1, 40), st.integers(1, 60), st.integers(2, 16), st.integers(0, 2**31 - 1), st.data())
def test_values_equal_torch_topk_and_indices_are_a_valid_top_k(n, m, d, seed, data):
    g = torch.Generator().manual_seed(seed)
    q, c = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)
    k = data.draw(st.integers(1, m))
    values, indices = topk_similarity(q, c, k, chunk_size=data.draw(st.integers(1, n)), impl="torch")
    full = F.normalize(q, dim=1) @ F.normalize(c, dim=1).T
    torch.testing.assert_close(values, torch.topk(full, k).values)
    torch.testing.assert_close(full.gather(1, indices), values)
    assert all(len(set(row)) == k for row in indices.tolist())  # recall@k = 1 up to ties
    # one block (the default here): bit for bit torch.topk of the same matmul
    values, _ = topk_similarity(q, c, k, impl="torch")
    assert torch.equal(values, torch.topk(full, k).values)


def test_all_masked_rows_are_padded_and_k_equal_to_m():
    q, c = _ints(0, 3, 4), _ints(1, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    mask[2, 3:] = False
    for impl in ("torch", "naive"):
        values, indices = topk_similarity(q, c, 5, mask, normalize=False, impl=impl)
        assert indices[1].tolist() == [-1] * 5 and torch.isinf(values[1]).all() and (values[1] < 0).all()
        assert indices[2, 3:].tolist() == [-1, -1] and sorted(indices[2, :3].tolist()) == [0, 1, 2]
        assert sorted(indices[0].tolist()) == [0, 1, 2, 3, 4]
        values, _ = topk_similarity(q, c, 2, mask, largest=False, normalize=False, impl=impl)
        assert (values[1] == float("inf")).all()


def test_ties_prefer_lower_columns_and_come_in_column_order():
    q = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.0], [1.0, 0.0], [1.0, 0.0]])
    for impl in ("torch", "naive"):
        values, indices = topk_similarity(q, c, 2, normalize=False, impl=impl, column_chunk_size=2)
        assert indices.tolist() == [[1, 3]] and values.tolist() == [[1.0, 1.0]]


def test_cosine_is_scale_invariant_and_half_inputs_give_float32():
    q, c = torch.randn(6, 8), torch.randn(20, 8)
    a = topk_similarity(q, c, 4)
    b = topk_similarity(q * 3.0, c * 0.5, 4)
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])
    values, _ = topk_similarity(q.half(), c.half(), 4)
    assert values.dtype == torch.float32


def test_selection_carries_no_gradient():
    q = torch.randn(4, 3, requires_grad=True)
    values, _ = topk_similarity(q, torch.randn(6, 3), 2)
    assert not values.requires_grad


def test_opcheck():
    q, c = F.normalize(torch.randn(5, 4), dim=1), F.normalize(torch.randn(9, 4), dim=1)
    labels, clabels = torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    mask = torch.rand(5, 9) > 0.2
    for args in (
        (q, c, 3, None, None, None, 0, None, True, "torch", 2, 4, False),
        (q, c, 9, mask, labels, clabels, 1, torch.tensor([0, -1, 2, 3, 8]), False, "torch", 5, 9, False),
        (q, torch.randn(9, 4).half(), 4, None, None, None, 0, None, True, "torch", 3, 2, True),
    ):
        torch.library.opcheck(torch.ops.qualcl.topk_similarity.default, args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be"),
        ({"k": 11}, "k must be"),
        ({"k": 2.5}, "k must be"),
        ({"mask": torch.ones(4, 9, dtype=torch.bool)}, "mask"),
        ({"labels": torch.zeros(4, dtype=torch.long)}, "candidate_labels"),
        ({"labels": torch.zeros(4), "candidate_labels": torch.zeros(10)}, "labels"),
        ({"label_relation": "other"}, "label_relation"),
        ({"exclude_index": torch.full((4,), 10)}, "exclude_index"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"impl": "fast"}, "impl"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    q, c = torch.randn(4, 8), torch.randn(10, 8)
    args = {"k": 3} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        topk_similarity(q, c, **args)


def test_bad_tensors_name_the_argument():
    with pytest.raises(ValueError, match="candidates"):
        topk_similarity(torch.randn(4, 8), torch.randn(10, 7), 2)
    with pytest.raises(ValueError, match="query.*non-finite"):
        topk_similarity(torch.full((4, 8), float("nan")), torch.randn(10, 8), 2)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 24),
    st.integers(130, 700),
    st.integers(1, 48),
    st.sampled_from([128, 160, 200, 256, 400, None]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_streaming_chunks_equal_the_dense_stable_sort(n, m, k, cols, use_labels, largest, seed):
    """Many chunks: the first chunk's rank bound, group screening, pending candidates and their merges."""
    k = min(k, m)
    q, c = _ints(seed, n, 3), _ints(seed + 1, m, 3)  # few distinct dot products: ties everywhere
    g = torch.Generator().manual_seed(seed + 2)
    labels = torch.randint(0, 3, (n,), generator=g) if use_labels else None
    column_labels = torch.randint(0, 3, (m,), generator=g) if use_labels else None
    exclude = torch.randint(-1, m, (n,), generator=g)
    args = {"labels": labels, "candidate_labels": column_labels, "exclude_index": exclude, "largest": largest}
    want = topk_similarity(q, c, k, normalize=False, impl="naive", **args)
    got = topk_similarity(q, c, k, normalize=False, impl="torch", column_chunk_size=cols, chunk_size=7, **args)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    q, c = torch.randn(n, 8, generator=g), torch.randn(m, 8, generator=g)  # distinct values, cosine
    want = topk_similarity(q, c, k, impl="naive", largest=largest)
    got = topk_similarity(q, c, k, impl="torch", column_chunk_size=cols, largest=largest)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0])


@pytest.mark.parametrize("order", ["descending", "random"])
def test_candidates_sorted_by_similarity_or_shuffled_stream_exactly(order):
    # 200-column chunks (not whole 16-column groups): sorted by similarity, the first chunk holds the whole
    # top-40 and every later chunk misses the threshold; shuffled, every chunk raises it
    g = torch.Generator().manual_seed(0)
    c = torch.linspace(1.0, -1.0, 800, dtype=torch.float64)[:, None]
    if order == "random":
        c = c[torch.randperm(800, generator=g)]
    q = torch.ones(5, 1, dtype=torch.float64)
    values, indices = topk_similarity(q, c, 40, normalize=False, impl="torch", column_chunk_size=200)
    want_values, want_indices = topk_similarity(q, c, 40, normalize=False, impl="naive")
    assert torch.equal(indices, want_indices) and torch.equal(values, want_values)


def test_half_and_memory_mapped_candidates_are_converted_chunk_by_chunk(tmp_path):
    import numpy as np

    g = torch.Generator().manual_seed(3)
    c = torch.randn(3000, 16, generator=g)
    path = tmp_path / "bank.npy"
    np.save(path, c.numpy())
    mapped = torch.from_numpy(np.load(path, mmap_mode="r+"))
    q = torch.randn(9, 16, generator=g)
    want = topk_similarity(q, c, 10, impl="naive")
    got = topk_similarity(q, mapped, 10, impl="torch", column_chunk_size=256)
    assert torch.equal(got[1], want[1])
    half = topk_similarity(q.half(), c.half(), 10, impl="torch", column_chunk_size=256)
    assert half[0].dtype == torch.float32
    assert torch.equal(half[1], topk_similarity(q.half(), c.half(), 10, impl="naive")[1])


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("cols", [256, 512, 300])
@pytest.mark.parametrize("k", [1, 10, 300])
def test_streaming_blocks_equal_the_dense_stable_sort_with_ties_across_chunks(n, cols, k):
    # 1,300 candidates (not a multiple of the chunk): two-level screening in whole 256-column chunks,
    # one level at 300, a tail chunk; k = 300 exceeds a 256-column chunk; few distinct values tie across chunks
    q, c = _ints(n, n, 2), _ints(n + 1, 1300, 2)
    want = topk_similarity(q, c, k, normalize=False, impl="naive")
    got = topk_similarity(q, c, k, normalize=False, impl="torch", column_chunk_size=cols)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    g = torch.Generator().manual_seed(k)
    q, c = torch.randn(n, 16, generator=g, dtype=torch.float64), torch.randn(1300, 16, generator=g, dtype=torch.float64)
    want = topk_similarity(q, c, k, impl="naive")
    got = topk_similarity(q, c, k, impl="torch", column_chunk_size=cols)
    assert got[0].dtype == torch.float64
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-15)


@pytest.mark.parametrize("m", [2000, 2003, 8192])
@pytest.mark.parametrize("k", [8, 64])
@pytest.mark.parametrize("ties", [False, True])
def test_one_chunk_selection_equals_the_dense_stable_sort(m, k, ties):
    # one chunk of all candidates (the default up to 65,536): one block_topk per row block (grouped at
    # m = 2000 with k = 8 and at m = 8192, a whole-row torch.topk otherwise); rows whose
    # k-th and (k + 1)-th values tie are redone by a stable sort
    g = torch.Generator().manual_seed(m + k)
    if ties:
        q, c = _ints(k, 6, 3), _ints(k + 1, m, 3)
    else:
        q, c = torch.randn(6, 8, generator=g), torch.randn(m, 8, generator=g)
    exclude = torch.randint(-1, m, (6,), generator=g)
    for largest in (True, False):
        want = topk_similarity(q, c, k, exclude_index=exclude, largest=largest, normalize=False, impl="naive")
        got = topk_similarity(q, c, k, exclude_index=exclude, largest=largest, normalize=False, impl="torch")
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.sampled_from([16 * 64, 16 * 100, 16 * 300]),
    st.integers(1, 70),
    st.sampled_from(["normal", "ties", "padded", "nan"]),
    st.integers(0, 2**31 - 1),
)
def test_block_topk_is_torch_topk_through_group_maxima(rows, width, k, kind, seed):
    """The grouped selection returns torch.topk's values, and positions holding them (equal ones when untied)."""
    from qualcl.kernels._topk_torch import GROUP, block_topk

    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, width, generator=g, dtype=torch.float64)
    if kind == "ties":  # few distinct values: ties at and around the k-th place
        scores = torch.randint(-3, 4, (rows, width), generator=g).double()
    elif kind == "padded":  # dropped columns: some rows have fewer than k + 1 finite groups
        scores[torch.rand(rows, width, generator=g) < 0.97] = float("-inf")
    elif kind == "nan":
        scores[0, torch.randint(0, width, (3,), generator=g)] = float("nan")
    k = min(k, width)
    grouped = width // GROUP >= 4 * k
    values, positions = block_topk(scores, k)
    want_values, want_positions = torch.topk(scores, k, dim=1)
    torch.testing.assert_close(values, want_values, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(scores.gather(1, positions), values, rtol=0, atol=0, equal_nan=True)
    assert all(len(set(row)) == k for row in positions.tolist())
    if kind == "normal" and grouped:
        assert torch.equal(positions, want_positions)
