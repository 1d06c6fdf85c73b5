import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pytorch_metric_learning.losses import NTXentLoss

import reference
from qualcl.functional import info_nce, nt_xent, restrict_top_k
from qualcl.losses import InfoNCE


def _embeddings(seed: int, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


shapes = st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(2, 6), st.integers(0, 2**31 - 1))
temperatures = st.sampled_from([0.02, 0.07, 0.3, 1.0])


@given(shapes, temperatures, st.booleans(), st.sampled_from(["mean", "sum", "none"]))
def test_matches_naive_reference(shape, tau, use_mask, reduction):
    n, m, d, seed = shape
    q, p, c = _embeddings(seed, n, d), _embeddings(seed + 1, n, d), _embeddings(seed + 2, m, d)
    mask = _embeddings(seed + 3, n, m) > 0 if use_mask else None
    weights = _embeddings(seed + 4, n).abs()
    got = info_nce(q, p, c, temperature=tau, negative_mask=mask, weights=weights, reduction=reduction)
    want = reference.info_nce(q, p, c, tau, mask, weights=weights, reduction=reduction)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


@given(shapes, temperatures, st.data())
def test_top_k_matches_naive_reference(shape, tau, data):
    n, m, d, seed = shape
    k = data.draw(st.integers(1, m))
    q, p, c = _embeddings(seed, n, d), _embeddings(seed + 1, n, d), _embeddings(seed + 2, m, d)
    mask = _embeddings(seed + 3, n, m) > -0.5
    got = info_nce(q, p, c, temperature=tau, negative_mask=mask, top_k=k, reduction="none")
    want = reference.info_nce(q, p, c, tau, mask, top_k=k, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


@given(st.integers(2, 7), st.integers(2, 5), st.integers(0, 2**31 - 1), temperatures)
def test_in_batch_matches_naive_reference(n, d, seed, tau):
    q, p = _embeddings(seed, n, d), _embeddings(seed + 1, n, d)
    torch.testing.assert_close(
        info_nce(q, p, temperature=tau),
        torch.tensor(reference.info_nce(q, p, None, tau), dtype=torch.float64),
    )


@given(shapes, st.data())
def test_permuting_negatives_leaves_loss_unchanged(shape, data):
    n, m, d, seed = shape
    q, p, c = _embeddings(seed, n, d), _embeddings(seed + 1, n, d), _embeddings(seed + 2, m, d)
    mask = _embeddings(seed + 3, n, m) > 0
    k = data.draw(st.integers(1, m))
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
    a = info_nce(q, p, c, negative_mask=mask, top_k=k, reduction="none")
    b = info_nce(q, p, c[perm], negative_mask=mask[:, perm], top_k=k, reduction="none")
    torch.testing.assert_close(a, b)


@given(shapes)
def test_top_k_equal_to_m_is_plain_info_nce(shape):
    n, m, d, seed = shape
    q, p, c = _embeddings(seed, n, d), _embeddings(seed + 1, n, d), _embeddings(seed + 2, m, d)
    torch.testing.assert_close(info_nce(q, p, c, top_k=m), info_nce(q, p, c))


@given(shapes, temperatures, st.data())
def test_single_kept_negative_is_two_way_softmax(shape, tau, data):
    n, m, d, seed = shape
    q, p, c = _embeddings(seed, n, d), _embeddings(seed + 1, n, d), _embeddings(seed + 2, m, d)
    keep_col = data.draw(st.integers(0, m - 1))
    mask = torch.zeros(n, m, dtype=torch.bool)
    mask[:, keep_col] = True
    cos = torch.nn.functional.cosine_similarity
    pos = cos(q, p) / tau
    neg = cos(q, c[keep_col].expand_as(q)) / tau
    want = -torch.log(torch.exp(pos) / (torch.exp(pos) + torch.exp(neg)))
    torch.testing.assert_close(info_nce(q, p, c, temperature=tau, negative_mask=mask, reduction="none"), want)


@given(shapes, st.floats(0.01, 100.0), st.floats(0.01, 100.0))
def test_scaling_inputs_leaves_loss_unchanged(shape, a, b):
    n, m, d, seed = shape
    q, p, c = _embeddings(seed, n, d), _embeddings(seed + 1, n, d), _embeddings(seed + 2, m, d)
    torch.testing.assert_close(info_nce(q * a, p * b, c * a * b), info_nce(q, p, c))


@given(shapes, temperatures)
def test_loss_is_non_negative(shape, tau):
    n, m, d, seed = shape
    q, p, c = _embeddings(seed, n, d), _embeddings(seed + 1, n, d), _embeddings(seed + 2, m, d)
    assert bool((info_nce(q, p, c, temperature=tau, reduction="none") >= 0).all())


def test_all_negatives_masked_gives_zero_loss_with_grad():
    q = _embeddings(0, 3, 4).requires_grad_()
    p, c = _embeddings(1, 3, 4), _embeddings(2, 5, 4)
    loss = info_nce(q, p, c, negative_mask=torch.zeros(3, 5, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert q.grad is not None


def test_zero_weights_give_attached_zero_not_nan():
    q = _embeddings(0, 3, 4).requires_grad_()
    loss = info_nce(q, _embeddings(1, 3, 4), weights=torch.zeros(3, dtype=torch.float64))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(q.grad).all()


def test_collapsed_embeddings_give_log_of_candidate_count():
    z = torch.ones(5, 3, dtype=torch.float64)
    torch.testing.assert_close(
        info_nce(z, z, torch.ones(7, 3, dtype=torch.float64)),
        torch.tensor(math.log(8.0), dtype=torch.float64),
    )


def test_top_k_keeps_ties():
    sim = torch.tensor([[0.5, 0.9, 0.5, 0.1]])
    assert restrict_top_k(sim, None, 2).tolist() == [[True, True, True, False]]


def test_gradcheck():
    q = _embeddings(0, 3, 4).requires_grad_()
    p = _embeddings(1, 3, 4).requires_grad_()
    c = _embeddings(2, 6, 4).requires_grad_()
    w = torch.rand(3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, x: info_nce(a, b, x, temperature=0.3, top_k=3, weights=w), (q, p, c))
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, temperature=0.5), (q, p))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    q, p, c = (_embeddings(s, 8, 16, dtype=torch.float32) for s in range(3))
    got = info_nce(q.to(dtype), p.to(dtype), c.to(dtype), temperature=0.05)
    assert got.dtype == torch.float32
    want = info_nce(q.to(dtype).float(), p.to(dtype).float(), c.to(dtype).float(), temperature=0.05)
    torch.testing.assert_close(got, want)


@given(st.integers(1, 8), st.integers(2, 6), st.integers(0, 2**31 - 1), temperatures)
def test_nt_xent_equals_pytorch_metric_learning(n, d, seed, tau):
    z1, z2 = _embeddings(seed, n, d), _embeddings(seed + 1, n, d)
    ours = nt_xent(z1, z2, temperature=tau)
    theirs = NTXentLoss(temperature=tau)(torch.cat([z1, z2]), torch.arange(n).repeat(2))
    torch.testing.assert_close(ours, theirs.to(ours.dtype))


def test_module_matches_functional_and_validates_arguments():
    q, p, c = _embeddings(0, 4, 8), _embeddings(1, 4, 8), _embeddings(2, 10, 8)
    torch.testing.assert_close(
        InfoNCE(0.2, reduction="sum")(q, p, c, top_k=3),
        info_nce(q, p, c, temperature=0.2, top_k=3, reduction="sum"),
    )
    with pytest.raises(ValueError, match="temperature"):
        InfoNCE(temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        InfoNCE(reduction="avg")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 11}, "top_k"),
        ({"top_k": 0}, "top_k"),
        ({"negative_mask": torch.ones(4, 3, dtype=torch.bool)}, "negative_mask"),
        ({"negative_mask": torch.ones(4, 10)}, "negative_mask"),
        ({"weights": torch.ones(3, dtype=torch.float64)}, "weights"),
        ({"weights": -torch.ones(4, dtype=torch.float64)}, "weights"),
        ({"reduction": "avg"}, "reduction"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    q, p, c = _embeddings(0, 4, 8), _embeddings(1, 4, 8), _embeddings(2, 10, 8)
    with pytest.raises((ValueError, TypeError), match=match):
        info_nce(q, p, c, **kwargs)


def test_bad_tensors_name_the_argument():
    q, p, c = _embeddings(0, 4, 8), _embeddings(1, 4, 8), _embeddings(2, 10, 8)
    with pytest.raises(ValueError, match="positive"):
        info_nce(q, p[:3], c)
    with pytest.raises(ValueError, match="negatives"):
        info_nce(q, p, c[:, :5])
    with pytest.raises(ValueError, match="query"):
        info_nce(q[:0], p[:0], c)
    bad = q.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="query.*non-finite"):
        info_nce(bad, p, c)
    with pytest.raises(ValueError, match="negatives.*non-finite"):
        info_nce(q, p, c.clone().fill_(float("inf")))
    with pytest.raises(ValueError, match=r"query must have shape \(N, D\)"):
        info_nce(q[0], p, c)
    with pytest.raises(TypeError, match="query"):
        info_nce(q.long(), p, c)


labels_lists = st.integers(2, 10).flatmap(lambda n: st.lists(st.integers(0, 3), min_size=n, max_size=n))


@given(labels_lists, st.integers(0, 2**31 - 1), st.sampled_from([0.1, 0.5]), st.sampled_from(["naive", "torch"]))
def test_sup_con_form_equals_pytorch_metric_learning(labels, seed, tau, impl):
    from pytorch_metric_learning.losses import SupConLoss

    y = torch.tensor(labels)
    z = _embeddings(seed, len(labels), 5)
    got = InfoNCE(tau, impl=impl)(z, labels=y)
    torch.testing.assert_close(got, SupConLoss(temperature=tau)(z, y))


@given(labels_lists, st.integers(0, 2**31 - 1), st.sampled_from(["naive", "torch"]))
def test_class_level_and_bank_forms_equal_the_float64_loop(labels, seed, impl):
    import kernel_reference as kref

    y = torch.tensor(labels)
    n = len(labels)
    q, p, bank = _embeddings(seed, n, 4), _embeddings(seed + 1, n, 4), _embeddings(seed + 2, 7, 4)
    yb = torch.arange(7) % 4
    loss = InfoNCE(0.3, impl=impl)
    rows = torch.arange(n)
    want = kref.info_nce(q, p, tau=0.3, positive_index=rows, labels=y, candidate_labels=y)
    assert loss(q, p, labels=y).item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    want = kref.info_nce(q, bank, tau=0.3, positive=p, labels=y, candidate_labels=yb)
    assert loss(q, p, bank, labels=y, negative_labels=yb).item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    # labels that are all distinct reduce the class-level form to the plain in-batch InfoNCE
    torch.testing.assert_close(loss(q, p, labels=rows), loss(q, p))


def test_a_row_with_nothing_to_contrast_does_not_move_the_mean():
    z = _embeddings(0, 6, 4)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = InfoNCE(0.2)
    extra = _embeddings(1, 1, 4)
    with_singleton = loss(torch.cat([z, extra]), labels=torch.cat([y, torch.tensor([9])]))
    # the singleton still acts as a negative of the other rows, so compare per-row sums, not means
    per_row = InfoNCE(0.2, reduction="none")(torch.cat([z, extra]), labels=torch.cat([y, torch.tensor([9])]))
    assert per_row[-1].item() == 0.0
    torch.testing.assert_close(with_singleton, per_row[:-1].mean())
    one_label = loss(z.clone().requires_grad_(), labels=torch.zeros(6, dtype=torch.long))
    assert one_label.item() == 0.0 and one_label.requires_grad


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "no positives"),
        ((None, "bank"), {}, "negatives need a positive"),
        (("p",), {"negative_labels": torch.zeros(5, dtype=torch.long)}, "negative_labels"),
        (("p", "bank"), {"labels": torch.zeros(4, dtype=torch.long)}, "negative_labels"),
        ((), {"labels": torch.zeros(3, dtype=torch.long)}, "labels"),
        ((), {"labels": torch.zeros(4)}, "labels"),
    ],
)
def test_label_forms_refuse_incomplete_calls(args, kwargs, match):
    q, p, bank = _embeddings(0, 4, 3), _embeddings(1, 4, 3), _embeddings(2, 5, 3)
    named = {"p": p, "bank": bank, None: None}
    with pytest.raises((ValueError, TypeError), match=match):
        InfoNCE()(q, *(named[a] for a in args), **kwargs)
