import math

import kernel_reference as ref
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from pytorch_metric_learning.losses import SupConLoss

from qualcl.functional import info_nce as functional_info_nce
from qualcl.functional import nt_xent
from qualcl.kernels import fused_info_nce

FORMS = ("positive", "index", "labels", "mask", "labels+exclude", "positive+labels", "index+exclude")


def _randn(seed: int, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _case(form: str, n: int, m: int, d: int, seed: int, negative_mask: bool) -> dict:
    """Keyword arguments of one way of describing positives (and optionally a dense negative mask)."""
    g = torch.Generator().manual_seed(seed + 7)
    kw: dict = {}
    if "positive" in form:
        kw["positive"] = _randn(seed + 1, n, d)
    if "index" in form:
        kw["positive_index"] = torch.randint(-1, m, (n,), generator=g)
    if "labels" in form:
        kw["labels"] = torch.randint(0, 3, (n,), generator=g)
        kw["candidate_labels"] = torch.randint(0, 3, (m,), generator=g)
    if form == "mask":
        kw["positive_mask"] = torch.rand(n, m, generator=g) > 0.6
    if "exclude" in form:
        kw["exclude_index"] = torch.randint(-1, m, (n,), generator=g)
    if negative_mask:
        kw["negative_mask"] = torch.rand(n, m, generator=g) > 0.3
    return kw


sizes = st.tuples(st.integers(1, 7), st.integers(1, 9), st.integers(2, 5), st.integers(0, 2**31 - 1))
temperatures = st.sampled_from([0.02, 0.1, 0.5, 1.0])
reductions = st.sampled_from(["mean", "sum", "none"])


@given(sizes, temperatures, st.sampled_from(FORMS), st.booleans(), reductions, st.data())
def test_naive_matches_float64_loop_reference(size, tau, form, use_mask, reduction, data):
    n, m, d, seed = size
    q, c = _randn(seed, n, d), _randn(seed + 2, m, d)
    kw = _case(form, n, m, d, seed, use_mask)
    top_k = data.draw(st.none() | st.integers(1, m))
    weights = _randn(seed + 3, n).abs()
    got = fused_info_nce(q, c, temperature=tau, top_k=top_k, weights=weights, reduction=reduction, impl="naive", **kw)
    want = ref.info_nce(q, c, tau=tau, top_k=top_k, weights=weights, reduction=reduction, **kw)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


@given(sizes, temperatures, st.sampled_from(FORMS), st.booleans(), reductions, st.data())
def test_streaming_equals_dense_for_every_chunking(size, tau, form, use_mask, reduction, data):
    """Forward and gradients of the chunked torch path equal the dense path for any (uneven) blocks."""
    n, m, d, seed = size
    kw = _case(form, n, m, d, seed, use_mask)
    top_k = data.draw(st.none() | st.integers(1, m))
    chunk = data.draw(st.none() | st.integers(1, n + 1))
    column_chunk = data.draw(st.none() | st.integers(1, m + 1))
    weights = data.draw(st.none() | st.just(_randn(seed + 3, n).abs()))
    results = []
    for impl, extra in (("naive", {}), ("torch", {"chunk_size": chunk, "column_chunk_size": column_chunk})):
        q, c = _randn(seed, n, d).requires_grad_(), _randn(seed + 2, m, d).requires_grad_()
        args = dict(kw)
        if "positive" in args:
            args["positive"] = args["positive"].clone().requires_grad_()
        loss = fused_info_nce(
            q, c, temperature=tau, top_k=top_k, weights=weights, reduction=reduction, impl=impl, **args, **extra
        )
        inputs = [q, c] + ([args["positive"]] if "positive" in args else [])
        grads = torch.autograd.grad(loss.sum(), inputs, allow_unused=True)
        results.append((loss, [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]))
    (dense, dense_grads), (streamed, streamed_grads) = results
    torch.testing.assert_close(streamed, dense)
    for got, want in zip(streamed_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, want)


@given(st.integers(1, 6), st.integers(1, 9), st.integers(2, 5), st.integers(0, 2**31 - 1), temperatures, st.data())
def test_separate_positive_form_equals_functional_info_nce(n, m, d, seed, tau, data):
    q, p, c = _randn(seed, n, d), _randn(seed + 1, n, d), _randn(seed + 2, m, d)
    mask = _randn(seed + 3, n, m) > -0.3
    top_k = data.draw(st.none() | st.integers(1, m))
    w = _randn(seed + 4, n).abs()
    want = functional_info_nce(q, p, c, temperature=tau, negative_mask=mask, top_k=top_k, weights=w)
    got = fused_info_nce(q, c, positive=p, temperature=tau, negative_mask=mask, top_k=top_k, weights=w, impl="torch")
    torch.testing.assert_close(got, want)


@given(st.integers(2, 8), st.integers(2, 5), st.integers(0, 2**31 - 1), temperatures, st.data())
def test_in_batch_and_nt_xent_forms(n, d, seed, tau, data):
    q, p = _randn(seed, n, d), _randn(seed + 1, n, d)
    top_k = data.draw(st.none() | st.integers(1, n - 1))
    rows = torch.arange(n)
    torch.testing.assert_close(
        fused_info_nce(q, p, positive_index=rows, temperature=tau, top_k=top_k, impl="torch"),
        functional_info_nce(q, p, temperature=tau, top_k=top_k),
    )
    both = torch.cat([q, p])
    idx = torch.arange(2 * n)
    torch.testing.assert_close(
        fused_info_nce(
            both, both, positive_index=(idx + n) % (2 * n), exclude_index=idx, temperature=tau, impl="torch"
        ),
        nt_xent(q, p, temperature=tau),
    )


def test_labels_form_equals_pytorch_metric_learning_sup_con():
    emb = _randn(0, 12, 6)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 0, 2, 3])
    rows = torch.arange(12)
    ours = fused_info_nce(
        emb, emb, labels=labels, candidate_labels=labels, exclude_index=rows, temperature=0.1, impl="torch"
    )
    theirs = SupConLoss(temperature=0.1)(emb, labels)
    torch.testing.assert_close(ours, theirs)


def _angles(degrees: list[float]) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(rad), torch.sin(rad)], dim=1)


@pytest.mark.parametrize("impl", ["torch", "naive"])
def test_sup_con_rows_without_a_positive_leave_the_mean_like_pml(impl):
    # PML's own SupConLoss test layout: six unit vectors, label 2 seen once (no positive)
    emb = _angles([0, 10, 20, 50, 60, 80])
    labels = torch.tensor([0, 0, 1, 1, 0, 2])
    rows = torch.arange(6)
    ours = fused_info_nce(
        emb, emb, labels=labels, candidate_labels=labels, exclude_index=rows, temperature=0.1, impl=impl
    )
    theirs = SupConLoss(temperature=0.1)(emb, labels)
    torch.testing.assert_close(ours, theirs)
    # the explicit float64 loop over anchors that have a positive gives the same number
    kept = [i for i in range(6) if (labels == labels[i]).sum() > 1]
    per_row = ref.info_nce(
        emb, emb, tau=0.1, labels=labels, candidate_labels=labels, exclude_index=rows, reduction="none"
    )
    assert ours.item() == pytest.approx(sum(per_row[i] for i in kept) / len(kept), rel=1e-12)
    # one label only: nothing to contrast, 0 (PML gives 0), and the gradient is an attached zero
    same = torch.zeros(6, dtype=torch.long)
    z = emb.clone().requires_grad_()
    loss = fused_info_nce(z, z, labels=same, candidate_labels=same, exclude_index=rows, impl=impl)
    assert loss.item() == 0.0 == SupConLoss()(emb, same).item()
    loss.backward()
    assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))


# PML averages the rows whose loss is non-zero (AvgNonZeroReducer): at tau = 0.02 a contrasted row's
# loss can round to exactly 0 and PML drops it where qualcl keeps it, so compare at tau >= 0.1
@given(st.integers(2, 12), st.integers(1, 5), st.integers(0, 2**31 - 1), st.sampled_from([0.1, 0.5, 1.0]))
def test_sup_con_form_equals_pml_for_any_labels(n, classes, seed, tau):
    emb = _randn(seed, n, 4)
    labels = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))
    rows = torch.arange(n)
    theirs = SupConLoss(temperature=tau)(emb, labels)
    for impl in ("torch", "naive"):
        ours = fused_info_nce(
            emb, emb, labels=labels, candidate_labels=labels, exclude_index=rows, temperature=tau, impl=impl
        )
        torch.testing.assert_close(ours, theirs.to(ours.dtype))


@given(sizes, st.sampled_from(FORMS), st.booleans(), st.data())
def test_rows_with_nothing_to_contrast_do_not_change_the_mean(size, form, use_mask, data):
    """The weighted mean divides by the weights of the rows with a positive and a negative only."""
    n, m, d, seed = size
    q, c = _randn(seed, n, d), _randn(seed + 2, m, d)
    kw = _case(form, n, m, d, seed, use_mask)
    w = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.1
    per_row = fused_info_nce(q, c, weights=w, reduction="none", impl="torch", **kw)
    mean = fused_info_nce(q, c, weights=w, impl="torch", **kw)
    kept = per_row != 0  # per-row losses of contrasted rows are > 0 (checked against the loop elsewhere)
    # the mean divides by the weights of the contrasted rows only
    if kept.any():
        torch.testing.assert_close(mean, per_row.sum() / w[kept].sum())
    else:
        assert mean.item() == 0.0


@given(sizes, st.sampled_from(FORMS), st.booleans())
def test_count_columns_matches_dense_masks(size, form, use_mask):
    from qualcl.kernels._columns import ColumnSpec, count_columns

    n, m, d, seed = size
    kw = _case(form, n, m, d, seed, use_mask)
    spec = ColumnSpec(*(kw.get(k) for k in ColumnSpec._fields))
    npos, nneg = count_columns(spec, n, m, torch.device("cpu"))
    cols = torch.arange(m)
    pos = torch.zeros(n, m, dtype=torch.bool)
    if spec.positive_index is not None:
        pos |= cols[None] == spec.positive_index[:, None]
    if spec.labels is not None:
        pos |= spec.labels[:, None] == spec.candidate_labels[None]
    if spec.positive_mask is not None:
        pos |= spec.positive_mask
    excl = torch.zeros_like(pos) if spec.exclude_index is None else cols[None] == spec.exclude_index[:, None]
    neg = ~pos & ~excl & (True if spec.negative_mask is None else spec.negative_mask)
    assert torch.equal(npos, (pos & ~excl).sum(1)) and torch.equal(nneg, neg.sum(1))


def test_gradcheck_torch_paths():
    q, c, p = _randn(0, 5, 4), _randn(1, 7, 4), _randn(2, 5, 4)
    w = torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    labels, column_labels = torch.tensor([0, 1, 0, 2, 1]), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    for kw in (
        {"chunk_size": 2},  # single column block: gradient computed during the forward pass
        {"chunk_size": 2, "reduction": "none"},  # recomputing backward
        {"chunk_size": 3, "column_chunk_size": 3, "top_k": 2},  # online log-sum-exp over column blocks
    ):
        assert torch.autograd.gradcheck(
            lambda a, b, x, kw=kw: fused_info_nce(a, b, positive=x, temperature=0.3, weights=w, impl="torch", **kw),
            (q.clone().requires_grad_(), c.clone().requires_grad_(), p.clone().requires_grad_()),
        )
    assert torch.autograd.gradcheck(
        lambda a, b: fused_info_nce(
            a, b, labels=labels, candidate_labels=column_labels, exclude_index=torch.arange(5), top_k=3,
            temperature=0.5, impl="torch", chunk_size=2,
        ),
        (q.clone().requires_grad_(), c.clone().requires_grad_()),
    )  # fmt: skip
    # weights and a learnt temperature get gradients too
    assert torch.autograd.gradcheck(
        lambda a, ww, t: fused_info_nce(a, c, positive_index=torch.arange(5), weights=ww, temperature=t, impl="torch"),
        (
            q.clone().requires_grad_(),
            w.clone().requires_grad_(),
            torch.tensor(0.4, dtype=torch.float64).requires_grad_(),
        ),
    )


def test_opcheck():
    q, c = F.normalize(_randn(0, 6, 4), dim=1), F.normalize(_randn(1, 9, 4), dim=1)
    p_logit = _randn(2, 6)
    w = torch.rand(6, dtype=torch.float64)
    pidx, labels = torch.tensor([0, 3, -1, 5, 8, 1]), torch.tensor([0, 1, 1, 2, 0, 1])
    clabels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    nmask = _randn(3, 6, 9) > 0
    for args in (
        (q, c, p_logit, w, pidx, None, None, None, None, None, 2.0, None, "mean", "torch", 4, 9, True, True),
        (q, c, None, None, None, labels, clabels, None, pidx, nmask, 3.0, 2, "none", "torch", 2, 4, True, False),
        (q, c, p_logit, w, None, None, None, nmask, None, None, 1.5, 3, "sum", "torch", 6, 9, False, True),
    ):
        grads = [True, True, args[2] is not None, args[3] is not None]
        args = tuple(a.clone().requires_grad_(g) if i < 4 and a is not None else a
                     for i, (a, g) in enumerate(zip(args, grads + [False] * 14, strict=True)))  # fmt: skip
        torch.library.opcheck(torch.ops.qualcl.info_nce.default, args)


def test_all_masked_rows_and_rows_without_positives_give_attached_zero():
    q, c, p = _randn(0, 4, 3).requires_grad_(), _randn(1, 6, 3).requires_grad_(), _randn(2, 4, 3)
    nothing = torch.zeros(4, 6, dtype=torch.bool)
    for impl in ("torch", "naive"):
        loss = fused_info_nce(q, c, positive=p, negative_mask=nothing, impl=impl, reduction="none")
        assert torch.equal(loss, torch.zeros(4, dtype=torch.float64))
        # no positive column at all (index -1) and nothing else: zero loss, finite zero gradient
        loss = fused_info_nce(q, c, positive_index=torch.full((4,), -1), impl=impl)
        assert loss.item() == 0.0
        (gq, gc) = torch.autograd.grad(loss, (q, c))
        assert torch.equal(gq, torch.zeros_like(gq)) and torch.equal(gc, torch.zeros_like(gc))


def test_top_k_keeps_ties_and_k_equal_to_m_is_plain():
    # small-integer embeddings and a power-of-two temperature: logits are exact on every path, so the
    # duplicated columns (4, 5 repeat 0, 1) tie exactly however the matmul is blocked
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-2, 3, (3, 4), generator=g).double()
    base = torch.randint(-2, 3, (4, 4), generator=g).double()
    c = torch.cat([base, base[:2]])
    p = torch.randint(-2, 3, (3, 4), generator=g).double()
    for top_k in (1, 2, 3):
        want = ref.info_nce(q, c, tau=0.5, positive=p, top_k=top_k, reduction="none", normalize=False)
        for impl in ("torch", "naive"):
            got = fused_info_nce(
                q, c, positive=p, temperature=0.5, top_k=top_k, reduction="none", normalize=False, impl=impl
            )
            torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(
        fused_info_nce(q, c, positive=p, top_k=6, impl="torch"), fused_info_nce(q, c, positive=p, impl="torch")
    )


def test_low_temperature_float32_is_finite_and_close():
    q, c = _randn(0, 64, 16, dtype=torch.float32), _randn(1, 80, 16, dtype=torch.float32)
    want = ref.info_nce(q[:8], c, tau=0.02, positive_index=torch.arange(8))
    got = fused_info_nce(q, c, positive_index=torch.arange(64), temperature=0.02, impl="torch", reduction="none")
    assert torch.isfinite(got).all()
    assert got[:8].mean().item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize(
    ("tau", "scale", "shifted"),
    [(0.5, 1.0, False), (0.02, 1.0, False), (0.005, 1.0, True), (1.0, 30.0, True)],
)
def test_float32_streaming_equals_float64_on_both_sides_of_the_unshifted_bound(tau, scale, shifted):
    """Small logits are exponentiated without the row maxima, large ones with: both agree with float64."""
    from qualcl.kernels._info_nce_torch import UNSHIFTED_BOUND, logit_bound

    q64, c64 = _randn(3, 24, 8) * scale, _randn(4, 40, 8) * scale
    normalize = scale == 1.0
    unit = torch.nn.functional.normalize
    q_, c_ = (unit(q64.float(), dim=1), unit(c64.float(), dim=1)) if normalize else (q64.float(), c64.float())
    assert (logit_bound(q_ / tau, c_) + math.log(40) > UNSHIFTED_BOUND) is shifted
    q, c = q64.float().requires_grad_(), c64.float().requires_grad_()
    index = torch.arange(24)
    got = fused_info_nce(q, c, positive_index=index, temperature=tau, normalize=normalize, impl="torch")
    got.backward()
    q64.requires_grad_(), c64.requires_grad_()
    want = fused_info_nce(q64, c64, positive_index=index, temperature=tau, normalize=normalize, impl="naive")
    want.backward()
    assert torch.isfinite(got) and got.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(q.grad, q64.grad.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c.grad, c64.grad.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    q, c = _randn(0, 8, 16, dtype=torch.float32).to(dtype), _randn(1, 12, 16, dtype=torch.float32).to(dtype)
    got = fused_info_nce(q, c, positive_index=torch.arange(8), temperature=0.05, impl="torch")
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got, fused_info_nce(q.float(), c.float(), positive_index=torch.arange(8), temperature=0.05)
    )
    q.requires_grad_()
    fused_info_nce(q, c, positive_index=torch.arange(8), impl="torch").backward()
    assert q.grad is not None and q.grad.dtype == dtype


def test_deterministic():
    q, c = _randn(0, 50, 8, dtype=torch.float32), _randn(1, 70, 8, dtype=torch.float32)
    runs = []
    for _ in range(2):
        a, b = q.clone().requires_grad_(), c.clone().requires_grad_()
        loss = fused_info_nce(
            a, b, positive_index=torch.arange(50), top_k=9, impl="torch", chunk_size=7, column_chunk_size=16
        )
        loss.backward()
        runs.append((loss, a.grad, b.grad))
    for x, y in zip(*runs, strict=True):
        assert torch.equal(x, y)


def test_no_grad_and_memory_bank_without_grad():
    q, c = _randn(0, 6, 4).requires_grad_(), _randn(1, 10, 4)
    fused_info_nce(q, c, positive_index=torch.arange(6), impl="torch").backward()
    with torch.no_grad():
        assert math.isfinite(fused_info_nce(q, c, positive_index=torch.arange(6), impl="torch").item())
    assert q.grad is not None and c.grad is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": torch.tensor([0.1, 0.2])}, "temperature"),
        ({"top_k": 11}, "top_k"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"positive_index": torch.arange(3)}, "positive_index"),
        ({"positive_index": torch.full((4,), 10)}, "positive_index"),
        ({"positive_index": torch.zeros(4)}, "positive_index"),
        ({"exclude_index": torch.full((4,), -2)}, "exclude_index"),
        ({"labels": torch.zeros(4, dtype=torch.long)}, "candidate_labels"),
        ({"labels": torch.zeros(3, dtype=torch.long), "candidate_labels": torch.zeros(10, dtype=torch.long)}, "labels"),
        (
            {"labels": torch.zeros(4, dtype=torch.long), "candidate_labels": torch.zeros(9, dtype=torch.long)},
            "candidate_labels",
        ),
        ({"negative_mask": torch.ones(4, 9, dtype=torch.bool)}, "negative_mask"),
        ({"positive_mask": torch.ones(4, 10)}, "positive_mask"),
        ({"weights": -torch.ones(4, dtype=torch.float64)}, "weights"),
        ({"reduction": "avg"}, "reduction"),
        ({"impl": "cuda"}, "impl"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"column_chunk_size": -1}, "column_chunk_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    q, c = _randn(0, 4, 8), _randn(2, 10, 8)
    base = {"positive_index": torch.arange(4)}
    with pytest.raises((ValueError, TypeError), match=match):
        fused_info_nce(q, c, **(base | kwargs))


def test_bad_tensors_name_the_argument():
    q, c = _randn(0, 4, 8), _randn(2, 10, 8)
    with pytest.raises(ValueError, match="candidates"):
        fused_info_nce(q, c[:, :5], positive_index=torch.arange(4))
    with pytest.raises(ValueError, match="positive"):
        fused_info_nce(q, c, positive=q[:3])
    with pytest.raises(ValueError, match="no positives"):
        fused_info_nce(q, c)
    bad = c.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="candidates.*non-finite"):
        fused_info_nce(q, bad, positive_index=torch.arange(4))
    with pytest.raises(ValueError, match="impl='triton'"):
        fused_info_nce(q, c, positive_index=torch.arange(4), impl="triton")


def test_old_name_warns_and_is_the_fused_op():
    import qualcl.kernels as kernels

    assert "info_nce" not in kernels.__all__ and "fused_info_nce" in kernels.__all__
    with pytest.warns(FutureWarning, match="fused_info_nce"):
        old = kernels.info_nce
    assert old is fused_info_nce
    with pytest.raises(AttributeError):
        kernels.no_such_op  # noqa: B018


def test_unit_rows_is_f_normalize_with_its_gradient_clamped_rows_included():
    from qualcl.kernels._rows import unit_rows

    x = _randn(5, 6, 7)
    x[2] *= 1e-14  # a norm under the 1e-12 clamp: the gradient is then dy / eps, as F.normalize's
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    assert torch.equal(unit_rows(ours), torch.nn.functional.normalize(theirs, dim=1))
    upstream = _randn(6, 6, 7)
    (unit_rows(ours) * upstream).sum().backward()
    (torch.nn.functional.normalize(theirs, dim=1) * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-12, atol=0)
    assert torch.autograd.gradcheck(unit_rows, (_randn(7, 4, 3).requires_grad_(),))


def test_rows_too_small_to_square_are_not_mistaken_for_zero_rows():
    q, c = _randn(0, 4, 8).float(), _randn(2, 10, 8).float()
    tiny = c.clone()
    tiny[3] *= 1e-25  # its squares underflow in float32, its direction is defined
    assert torch.isfinite(fused_info_nce(q, tiny, positive_index=torch.arange(4)))
    tiny[3] = 0.0
    with pytest.raises(ValueError, match="candidates"):
        fused_info_nce(q, tiny, positive_index=torch.arange(4))
