"""The bfloat16 screen of ``topk_similarity``'s torch path: its bound holds, and its top-K is exact."""

import kernel_reference as ref
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.kernels import _topk_screen as screen
from qualcl.kernels import topk_similarity
from qualcl.kernels.topk import _topk_impl, topk_checked


def _near_ties(seed: int, n: int, m: int, d: int, spread: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates a common direction apart by ``spread``: their scores differ far below bfloat16's
    resolution (~4e-3) and far above float32's (~6e-8), so only an exact re-ranking orders them."""
    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(1, d, generator=g), dim=1)
    c = base + spread * torch.randn(m, d, generator=g)
    q = base + 0.05 * torch.randn(n, d, generator=g)
    return q, c


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(2, 300),
    st.sampled_from([8, 64, 256]),
    st.floats(1e-5, 1e-2),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**31 - 1),
    st.data(),
)
def test_screened_top_k_equals_the_float64_order_on_near_ties(n, m, d, spread, largest, normalize, seed, data):
    q, c = _near_ties(seed, n, m, d, spread)
    k = data.draw(st.integers(1, m))
    cols = data.draw(st.none() | st.integers(1, m))
    got = topk_similarity(q, c, k, largest=largest, normalize=normalize, screen=True, column_chunk_size=cols)
    want = topk_similarity(q.double(), c.double(), k, largest=largest, normalize=normalize, impl="naive")
    torch.testing.assert_close(got[0], want[0].float(), rtol=0, atol=1e-6)
    # indices: equal wherever the float64 values are further apart than float32's rounding of them
    gap = (want[0][:, 1:] - want[0][:, :-1]).abs()
    clear = torch.ones_like(want[1], dtype=torch.bool)
    clear[:, 1:] &= gap > 1e-6
    clear[:, :-1] &= gap > 1e-6
    if k < m:  # the k-th must also be clear of the (k + 1)-th, which is not returned
        full = topk_similarity(q.double(), c.double(), k + 1, largest=largest, normalize=normalize, impl="naive")[0]
        clear[:, -1] &= (full[:, -1] - full[:, -2]).abs() > 1e-6
    assert torch.equal(got[1][clear], want[1][clear])


def test_near_ties_need_the_re_ranking():
    """The test above can fail: ranked by the bfloat16 estimates alone, the order is wrong."""
    q, c = _near_ties(0, 4, 300, 256, 1e-3)
    estimate = torch.mm(F.normalize(q, dim=1).bfloat16(), F.normalize(c, dim=1).bfloat16().T).float()
    by_estimate = torch.sort(estimate, dim=1, descending=True, stable=True).indices[:, :10]
    want = topk_similarity(q.double(), c.double(), 10, impl="naive")[1]
    assert not torch.equal(by_estimate, want)
    assert torch.equal(topk_similarity(q, c, 10, screen=True)[1], want)


@given(st.integers(1, 8), st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**31 - 1), st.data())
def test_screened_matches_the_loop_reference_exactly_with_ties(n, m, d, seed, data):
    """Small integers: exact in bfloat16 and float32, so every tie is exact; masks, labels, exclusions, chunks."""
    g = torch.Generator().manual_seed(seed)
    q, c = torch.randint(-2, 3, (n, d), generator=g).float(), torch.randint(-2, 3, (m, d), generator=g).float()
    mask = torch.rand(n, m, generator=g) > 0.3 if data.draw(st.booleans()) else None
    labels, column_labels = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (m,), generator=g)
    relation = data.draw(st.sampled_from([None, "different", "same"]))
    exclude = torch.randint(-1, m, (n,), generator=g)
    largest = data.draw(st.booleans())
    k = data.draw(st.integers(1, m))
    keep = torch.ones(n, m, dtype=torch.bool) if mask is None else mask.clone()
    if relation is not None:
        same = labels[:, None] == column_labels[None, :]
        keep &= ~same if relation == "different" else same
    for i, j in enumerate(exclude.tolist()):
        if j >= 0:
            keep[i, j] = False
    want_values, want_indices = ref.topk(q, c, k, keep=keep, largest=largest, normalize=False)
    by_label = (
        {} if relation is None else {"labels": labels, "candidate_labels": column_labels, "label_relation": relation}
    )
    values, indices = topk_similarity(
        q, c, k, mask, exclude_index=exclude, largest=largest, normalize=False, screen=True, **by_label,
        chunk_size=data.draw(st.none() | st.integers(1, n)), column_chunk_size=data.draw(st.none() | st.integers(1, m)),
    )  # fmt: skip
    assert indices.tolist() == want_indices
    assert values.tolist() == want_values


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 16),
    st.integers(1, 64),
    st.sampled_from([1, 3, 16, 255, 512, 2048]),
    st.floats(1e-30, 1e30),
    st.integers(0, 2**31 - 1),
)
def test_the_bound_holds_for_every_entry(n, m, d, scale, seed):
    """``|s̃ - r| <= A + u'|s̃|`` for the bfloat16 estimate ``s̃`` and the re-scored float32 value ``r``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g) * scale
    c = torch.randn(m, d, generator=g) * torch.rand(m, 1, generator=g)
    c_norm = float(torch.linalg.vector_norm(c, dim=1).max())
    low = q.bfloat16()
    estimate = torch.mm(low, c.bfloat16().T).double()
    exact = (q[:, None, :] * c[None, :, :]).sum(dim=2).double()
    bound = screen.error_terms(q, low, c_norm)[:, None] + screen.U_OUT * estimate.abs()
    assert bool(((estimate - exact).abs() <= bound).all())


def test_floor_is_increasing_and_below_the_kth_estimate():
    kth = torch.linspace(-3, 3, 601)
    terms = torch.full((601,), 1e-3, dtype=torch.float64)
    floor = screen._floor(kth, terms)
    assert bool((floor[1:] >= floor[:-1]).all()) and bool((floor < kth).all())


def test_fused_division_rounds_like_unit_rows_then_bfloat16():
    from qualcl.kernels._rows import unit_rows

    x = torch.randn(500, 256) * 3
    norms = torch.linalg.vector_norm(x, dim=1)
    out = torch.empty(500, 256, dtype=torch.bfloat16)
    torch.div(x, norms.clamp_min(1e-12)[:, None].expand_as(x), out=out)
    assert torch.equal(out, unit_rows(x, norms).to(torch.bfloat16))


def test_memory_mapped_and_half_candidates_and_norms_from_the_caller(tmp_path):
    import numpy as np

    q, c = _near_ties(5, 7, 3000, 64, 1e-3)
    np.save(tmp_path / "bank.npy", c.numpy())
    mapped = torch.from_numpy(np.load(tmp_path / "bank.npy", mmap_mode="r+"))
    want = topk_similarity(q.double(), c.double(), 10, impl="naive")[1]
    assert torch.equal(topk_similarity(q, mapped, 10, screen=True, column_chunk_size=256)[1], want)
    norms = torch.linalg.vector_norm(c, dim=1)
    got = topk_checked(q, mapped, 10, candidate_norms=norms, column_chunk_size=512, screen=True)
    assert torch.equal(got[1], want)
    half = topk_similarity(q.half(), c.half(), 10, screen=True)
    assert half[0].dtype == torch.float32
    assert torch.equal(half[1], topk_similarity(q.half().double(), c.half().double(), 10, impl="naive")[1])


def test_huge_scores_fall_back_to_the_float32_path():
    q, c = torch.randn(3, 8) * 1e30, torch.randn(20, 8) * 1e10
    got = topk_similarity(q, c, 4, normalize=False, screen=True)
    assert torch.equal(got[1], topk_similarity(q, c, 4, normalize=False, screen=False)[1])


@pytest.mark.parametrize("kind", ["collapsed", "duplicated"])
def test_rows_the_screen_cannot_narrow_fall_back_to_the_float32_path(kind, monkeypatch):
    """Collapsed embeddings (every estimate within the bound) would leave every column to re-score."""
    calls = []
    original = screen.streaming_topk
    monkeypatch.setattr(screen, "streaming_topk", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 64, generator=g)
    if kind == "collapsed":
        c = base + 1e-6 * torch.randn(3000, 64, generator=g)
    else:  # 900 copies of one row among random ones
        c = torch.randn(3000, 64, generator=g)
        c[::3] = base
    q = base + 0.01 * torch.randn(5, 64, generator=g)
    got = topk_similarity(q, c, 4, screen=True, column_chunk_size=512)
    assert calls == [1]
    assert torch.equal(got[1], topk_similarity(q, c, 4, screen=False, column_chunk_size=512)[1])
    if kind == "duplicated":
        assert got[1].tolist() == [[0, 3, 6, 9]] * 5  # equal rows tie: the lowest columns, in order


def test_the_default_screens_only_large_float32_calls_with_a_small_k(monkeypatch):
    seen = []
    original = screen.screened_topk

    def spy(*args, **kwargs):
        seen.append(True)
        return original(*args, **kwargs)

    import qualcl.kernels.topk as topk_module

    monkeypatch.setattr(topk_module, "screened_topk", spy)
    monkeypatch.setattr(screen, "bf16_matmul_is_native", lambda: True)
    q, c = torch.randn(64, 128), torch.randn(20_000, 128)
    topk_similarity(q, c, 5)  # 64 · 20,000 · 128 >= 2^27 and 20,000 >= 1024 · 5
    assert seen == [True]
    topk_similarity(q, c, 50)  # k too large a share
    topk_similarity(q[:8], c, 5)  # too small a call
    topk_similarity(q.double(), c.double(), 5)  # float64
    assert seen == [True]
    monkeypatch.setattr(screen, "bf16_matmul_is_native", lambda: False)
    topk_similarity(q, c, 5)
    assert seen == [True]


@pytest.mark.parametrize(("value", "error"), [(1, TypeError), ("yes", TypeError)])
def test_screen_must_be_a_bool_or_none(value, error):
    with pytest.raises(error, match="screen"):
        topk_similarity(torch.randn(3, 4), torch.randn(5, 4), 2, screen=value)


def test_screen_refuses_float64():
    with pytest.raises(ValueError, match="screen"):
        topk_similarity(torch.randn(3, 4).double(), torch.randn(5, 4).double(), 2, screen=True)


def test_opcheck_screened():
    q, c = F.normalize(torch.randn(5, 4), dim=1), torch.randn(9, 4)
    exclude = torch.tensor([0, -1, 2, 3, 8])
    for args in (
        (q, c, 3, None, None, None, 0, None, True, "torch", 2, 4, True, None, True),
        (q, c, 9, None, None, None, 0, exclude, False, "torch", 5, 9, False, None, True),
    ):
        torch.library.opcheck(torch.ops.qualcl.topk_similarity.default, args)
    assert _topk_impl(*args)[1].shape == (5, 9)
