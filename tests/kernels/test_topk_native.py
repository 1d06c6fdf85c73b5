"""The compiled CPU selection kernel: every row equals a stable descending sort's first k, on every path."""

import shutil
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.kernels import _native, topk_similarity
from qualcl.kernels._native import native_available, native_topk_rows

needs_kernel = pytest.mark.skipif(
    not native_available(torch.empty(0)), reason="no C compiler here: the torch path runs (tested elsewhere)"
)


def _select(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.empty(scores.shape[0], k)
    columns = torch.empty(scores.shape[0], k, dtype=torch.long)
    native_topk_rows(scores, k, values, columns)
    return values, columns


def _reference(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive: a stable descending sort in float64 (NaN first, then by value, equal values by lower column)."""
    values, columns = torch.sort(scores.double(), dim=1, descending=True, stable=True)
    return values[:, :k].float(), columns[:, :k]


def _scores(kind: str, rows: int, width: int, g: torch.Generator) -> torch.Tensor:
    scores = torch.randn(rows, width, generator=g)
    if kind == "ties":  # few distinct values: ties at and around the k-th place, and more candidates than fit
        scores = torch.randint(-3, 4, (rows, width), generator=g).float()
    elif kind == "near":  # neighbouring floats: every bucket of the bound is crowded
        scores = 1 + torch.randint(0, 64, (rows, width), generator=g).float() * torch.finfo(torch.float32).eps
    elif kind == "padded":  # dropped columns: some rows have fewer than k finite entries
        scores[torch.rand(rows, width, generator=g) < 0.97] = float("-inf")
    elif kind == "nan":
        scores[0, torch.randint(0, width, (3,), generator=g)] = float("nan")
    elif kind == "inf":
        scores[:, torch.randint(0, width, (5,), generator=g)] = float("inf")
    elif kind == "zeros":  # -0.0 and 0.0 are one value: the lower column comes first
        scores = torch.where(torch.rand(rows, width, generator=g) < 0.5, -0.0, 0.0)
    elif kind == "few zeros":  # the same among a few candidates of the grouped path
        scores = -10 - torch.rand(rows, width, generator=g)
        scores[:, torch.randperm(width, generator=g)[:4]] = 1.0
        signs = torch.rand(rows, 8, generator=g) < 0.5
        where = torch.randperm(width, generator=g)[:8].expand(rows, 8).clone()
        scores.scatter_(1, where, torch.where(signs, -0.0, 0.0))
    elif kind == "huge":  # a range the bound's histogram cannot span
        scores[:, 0] = 3e38
        scores[:, 1] = -3e38
    return scores


@needs_kernel
@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 9),
    st.sampled_from([1, 15, 16, 100, 16 * 64, 16 * 64 + 7, 8192]),
    st.integers(1, 70),
    st.sampled_from(["normal", "ties", "near", "padded", "nan", "inf", "zeros", "few zeros", "huge"]),
    st.integers(0, 2**31 - 1),
)
def test_rows_equal_the_stable_sort(rows, width, k, kind, seed):
    scores = _scores(kind, rows, width, torch.Generator().manual_seed(seed))
    k = min(k, width)
    values, columns = _select(scores, k)
    want_values, want_columns = _reference(scores, k)
    assert torch.equal(columns, want_columns)
    torch.testing.assert_close(values, want_values, rtol=0, atol=0, equal_nan=True)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_strided_rows_and_any_thread_count(threads):
    """Rows of a wider tensor (row stride > width), split over 1 to 3 threads, give the same answer."""
    g = torch.Generator().manual_seed(threads)
    wide = torch.randn(33, 8200, generator=g)
    scores = wide[:, :8192]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        values, columns = _select(scores, 64)
    finally:
        torch.set_num_threads(before)
    want_values, want_columns = _reference(scores, 64)
    assert torch.equal(columns, want_columns) and torch.equal(values, want_values)


@needs_kernel
@pytest.mark.parametrize(
    ("bad", "match"), [("scores", "float32"), ("stride", "stride"), ("values", "contiguous"), ("columns", "int64")]
)
def test_bad_buffers_are_refused(bad, match):
    scores, values, columns = torch.randn(4, 32), torch.empty(4, 4), torch.empty(4, 4, dtype=torch.long)
    if bad == "scores":
        scores = scores.double()
    elif bad == "stride":
        scores = torch.randn(32, 4).t()
    elif bad == "values":
        values = torch.empty(4, 8)[:, :4]
    else:
        columns = columns.int()
    with pytest.raises(ValueError, match=match):
        native_topk_rows(scores, 4, values, columns)


@needs_kernel
@pytest.mark.parametrize("largest", [True, False])
def test_topk_similarity_is_the_same_with_and_without_the_kernel(largest, monkeypatch):
    g = torch.Generator().manual_seed(int(largest))
    q, c = torch.randn(700, 32, generator=g), torch.randint(-2, 3, (3000, 32), generator=g).float()
    labels, column_labels = torch.randint(0, 5, (700,), generator=g), torch.randint(0, 5, (3000,), generator=g)
    kwargs = {"labels": labels, "candidate_labels": column_labels, "exclude_index": torch.arange(700)}
    kwargs["largest"] = largest
    with_kernel = topk_similarity(q, c, 40, impl="torch", **kwargs)
    monkeypatch.setattr("qualcl.kernels._topk_torch.native_available", lambda x: False)
    without = topk_similarity(q, c, 40, impl="torch", **kwargs)
    assert torch.equal(with_kernel[1], without[1]) and torch.equal(with_kernel[0], without[0])


def _fresh_library(monkeypatch, tmp_path, **env):
    monkeypatch.setenv("QUALCL_CACHE", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _native._library.cache_clear()
    try:
        return _native._library()
    finally:
        _native._library.cache_clear()


def test_disabled_by_the_environment(monkeypatch, tmp_path):
    assert _fresh_library(monkeypatch, tmp_path, QUALCL_NATIVE="0") is None
    assert not (tmp_path / "native").exists()


def test_a_failed_build_warns_once_and_leaves_the_torch_path(monkeypatch, tmp_path):
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: no such thing' >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.warns(RuntimeWarning, match="exited with 3: cc: no such thing"):
        assert _fresh_library(monkeypatch, tmp_path, CC=str(broken)) is None
    assert not list((tmp_path / "native").glob("*.so")) and not list((tmp_path / "native").glob("*.tmp"))


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here")
def test_built_once_into_the_cache_and_reused(monkeypatch, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _fresh_library(monkeypatch, tmp_path) is not None
    built = list((tmp_path / "native").glob("topk-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert _fresh_library(monkeypatch, tmp_path) is not None
    assert built[0].stat().st_mtime_ns == stamp


@needs_kernel
@pytest.mark.parametrize("kind", ["few zeros", "near", "ties", "nan", "huge"])
@pytest.mark.parametrize("k", [1, 8, 64])
def test_wide_rows_equal_the_stable_sort(kind, k):
    """8,192 columns (the grouped path, and its fallbacks) for each kind of row the draws above may miss."""
    scores = _scores(kind, 16, 8192, torch.Generator().manual_seed(k))
    values, columns = _select(scores, k)
    want_values, want_columns = _reference(scores, k)
    assert torch.equal(columns, want_columns)
    torch.testing.assert_close(values, want_values, rtol=0, atol=0, equal_nan=True)
