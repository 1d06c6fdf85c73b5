"""Circle and fine triplet losses: float64 loops, pytorch-metric-learning, the public code, streaming."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning.losses import CircleLoss as PMLCircleLoss

from qualcl.functional import circle_loss, relevance_degrees
from qualcl.kernels import batch_hard_triplets
from qualcl.losses import CircleLoss, FineTripletLoss


def _reference(emb, labels, ref=None, ref_labels=None, *, m, gamma, aggregate, w=None, anchor_w=None):
    """Explicit loops in float64: per-anchor soft-plus of LSEs, or one log over all pairs."""
    e = F.normalize(emb.double(), dim=1)
    own = ref is None
    r = e if own else F.normalize(ref.double(), dim=1)
    rl = labels if own else ref_labels
    n, mm = e.shape[0], r.shape[0]
    pos_terms, neg_terms, per_anchor = [], [], []
    for i in range(n):
        lp, ln = [], []
        for j in range(mm):
            if own and (j == i or (aggregate == "global" and j < i)):
                continue
            s = float(e[i] @ r[j])
            if int(labels[i]) == int(rl[j]):
                wij = 1.0 if w is None else float(w[i][j])
                lp.append(-gamma * wij * max(1 + m - s, 0.0) * (s - (1 - m)))
            else:
                ln.append(gamma * max(s + m, 0.0) * (s - m))
        pos_terms += lp
        neg_terms += ln
        if lp and ln:
            lse = lambda v: max(v) + math.log(sum(math.exp(x - max(v)) for x in v))
            per_anchor.append((i, math.log1p(math.exp(lse(lp) + lse(ln)))))
    if aggregate == "global":
        if not pos_terms or not neg_terms:
            return 0.0
        return math.log1p(sum(math.exp(x) for x in pos_terms) * sum(math.exp(x) for x in neg_terms))
    if not per_anchor:
        return 0.0
    weights = [1.0 if anchor_w is None else float(anchor_w[i]) for i, _ in per_anchor]
    return sum(wi * v for wi, (_, v) in zip(weights, per_anchor, strict=True)) / sum(weights)


cases = st.tuples(st.integers(2, 14), st.integers(1, 4), st.integers(0, 2**31 - 1))


@settings(max_examples=30, deadline=None)
@given(cases, st.sampled_from(["per_anchor", "global"]), st.booleans())
def test_matches_the_float64_loop(case, aggregate, weighted):
    n, classes, seed = case
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    w = torch.rand(n, n, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    got = circle_loss(emb, labels, margin=0.25, gamma=4.0, aggregate=aggregate, pair_weights=w)
    want = _reference(emb, labels, m=0.25, gamma=4.0, aggregate=aggregate, w=w)
    assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(cases)
def test_reference_set_and_anchor_weights_match_the_loop(case):
    n, classes, seed = case
    g = torch.Generator().manual_seed(seed)
    emb, ref = torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    labels, ref_labels = torch.randint(0, classes, (n,), generator=g), torch.randint(0, classes, (7,), generator=g)
    anchor_w = torch.rand(n, generator=g, dtype=torch.float64)
    for aggregate in ("per_anchor", "global"):
        weights = anchor_w if aggregate == "per_anchor" else None
        got = circle_loss(emb, labels, None, ref, ref_labels, gamma=3.0, aggregate=aggregate, weights=weights)
        want = _reference(emb, labels, ref, ref_labels, m=0.25, gamma=3.0, aggregate=aggregate, anchor_w=weights)
        assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(4, 40), st.integers(2, 6), st.integers(0, 2**31 - 1), st.booleans())
def test_equals_pml_circle_loss_values_and_gradients(n, classes, seed, with_ref):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, 8, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, classes, (n,), generator=g)
    ref = torch.randn(9, 8, generator=g, dtype=torch.float64, requires_grad=True) if with_ref else None
    ref_labels = torch.randint(0, classes, (9,), generator=g) if with_ref else None
    theirs = PMLCircleLoss(m=0.4, gamma=80)(emb, labels, ref_emb=ref, ref_labels=ref_labels)
    ours = CircleLoss(margin=0.4, gamma=80.0)(emb, labels, ref_emb=ref, ref_labels=ref_labels)
    torch.testing.assert_close(ours, theirs)
    inputs = [emb] if ref is None else [emb, ref]
    for a, b in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(theirs, inputs), strict=True):
        torch.testing.assert_close(a, b)


def test_equals_pml_with_mined_tuples():
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(30, 8, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (30,), generator=g)
    triplets = batch_hard_triplets(emb.detach(), labels)
    pairs = (triplets[0], triplets[1], triplets[0], triplets[2])
    for tuple_ in (triplets, pairs):
        theirs = PMLCircleLoss(m=0.25, gamma=256)(emb, labels, indices_tuple=tuple_)
        ours = CircleLoss()(emb, labels, indices_tuple=tuple_)
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(torch.autograd.grad(ours, emb)[0], torch.autograd.grad(theirs, emb)[0])


def _public_code(feats, labels, *, scale=1.0, margin=0.25, degrees=None):
    """FundusDR's FineTripletLoss.forward transcribed (one-hot labels, upper triangle), with its deg_mat."""
    onehot = F.one_hot(labels).to(feats.dtype)
    mask = onehot @ onehot.t()
    pos_mask = mask.triu(diagonal=1)
    neg_mask = (mask - 1).abs_().triu(diagonal=1)
    f = F.normalize(feats)
    sim = f.mm(f.t())
    pos, neg = sim[pos_mask == 1], sim[neg_mask == 1]
    weight = 1.0
    if degrees is not None:
        degs = degrees.unsqueeze(1)
        weight = torch.mm(1 / degs, degs.t()).mul(mask)[pos_mask == 1]
    alpha_p, alpha_n = torch.relu(-pos + 1 + margin), torch.relu(neg + margin)
    loss_p = torch.sum(torch.exp(-scale * weight * alpha_p * (pos - (1 - margin))))
    loss_n = torch.sum(torch.exp(scale * alpha_n * (neg - margin)))
    return torch.log(1 + loss_p * loss_n)


def test_global_form_is_the_public_code():
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(16, 12, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (16,), generator=g)
    ours = CircleLoss(margin=0.25, gamma=1.0, aggregate="global", detach_alpha=False)(feats, labels)
    theirs = _public_code(feats, labels)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours, feats)[0], torch.autograd.grad(theirs, feats)[0])
    # the "fine" weights of commit 1b050ef: deg from the two halves, deg_j / deg_i on positives (detached)
    degrees = F.cosine_similarity(feats[:, :6], feats[:, 6:]).detach()
    fine = FineTripletLoss(detach_alpha=False)(feats, labels)
    code = _public_code(feats, labels, degrees=degrees)
    torch.testing.assert_close(fine, code)
    torch.testing.assert_close(torch.autograd.grad(fine, feats)[0], torch.autograd.grad(code, feats)[0])


@pytest.mark.parametrize("relevance", ["mirror_agreement", "symmetric", None])
def test_fine_weights_match_the_loop(relevance):
    g = torch.Generator().manual_seed(1)
    feats = torch.rand(10, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (10,), generator=g)
    deg = relevance_degrees(feats)
    half = feats.shape[1] // 2
    loop = torch.tensor([float(F.cosine_similarity(f[:half], f[half:], dim=0)) for f in feats], dtype=torch.float64)
    torch.testing.assert_close(deg, loop)
    w = [[1.0] * 10 for _ in range(10)]
    if relevance == "mirror_agreement":
        w = [[float(deg[j] / deg[i]) for j in range(10)] for i in range(10)]
    elif relevance == "symmetric":
        w = [[math.sqrt(float(deg[i] * deg[j])) for j in range(10)] for i in range(10)]
    got = FineTripletLoss(scale=5.0, relevance=relevance, aggregate="per_anchor")(feats, labels)
    assert float(got) == pytest.approx(_reference(feats, labels, m=0.25, gamma=5.0, aggregate="per_anchor", w=w))


def test_relevance_weights_carry_no_gradient():
    feats = torch.rand(8, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    degrees = relevance_degrees(feats)
    assert not degrees.requires_grad
    fixed = degrees.clone()
    a = FineTripletLoss(scale=4.0)(feats, labels)
    b = FineTripletLoss(scale=4.0)(feats, labels, degrees=fixed)
    torch.testing.assert_close(torch.autograd.grad(a, feats)[0], torch.autograd.grad(b, feats)[0])
    w = torch.rand(8, 8, dtype=torch.float64, requires_grad=True)
    circle_loss(feats, labels, gamma=4.0, pair_weights=w).backward()
    assert w.grad is None


@pytest.mark.parametrize("aggregate", ["per_anchor", "global"])
def test_gradcheck_dense_and_streamed(aggregate):
    # with detach_alpha=False the loss is an ordinary function (finite differences see all of it);
    # the detached form is checked against PML's (which detaches) and the dense path above
    detach_alpha = False
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2])
    rows, cols = torch.rand(9, dtype=torch.float64) + 0.5, torch.rand(9, dtype=torch.float64) + 0.5
    for chunk in (None, 2):

        def f(x, chunk=chunk):
            return circle_loss(
                x,
                labels,
                gamma=3.0,
                aggregate=aggregate,
                detach_alpha=detach_alpha,
                pair_weights=(rows, cols),
                chunk_size=chunk,
            )

        assert torch.autograd.gradcheck(f, (emb,))


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 30), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_streaming_equals_dense(n, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (n,), generator=g)
    factors = (torch.rand(n, generator=g, dtype=torch.float64) + 0.5, torch.rand(n, generator=g, dtype=torch.float64))
    for aggregate in ("per_anchor", "global"):
        dense = circle_loss(emb, labels, gamma=8.0, aggregate=aggregate, pair_weights=factors)
        streamed = circle_loss(emb, labels, gamma=8.0, aggregate=aggregate, pair_weights=factors, chunk_size=chunk)
        torch.testing.assert_close(streamed, dense, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            torch.autograd.grad(streamed, emb)[0], torch.autograd.grad(dense, emb)[0], rtol=1e-9, atol=1e-12
        )


def test_no_valid_pair_gives_an_attached_zero():
    emb = torch.randn(5, 4, requires_grad=True)
    for aggregate in ("per_anchor", "global"):
        loss = circle_loss(emb, torch.zeros(5, dtype=torch.long), aggregate=aggregate)
        assert float(loss.detach()) == 0.0 and loss.requires_grad
        loss.backward()
    per = circle_loss(emb, torch.tensor([0, 0, 1, 2, 3]), reduction="none")
    assert per.shape == (5,) and float(per[2]) == 0.0 and float(per[0]) > 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"margin": -0.1}, "margin"),
        ({"gamma": 0.0}, "gamma"),
        ({"aggregate": "mean"}, "aggregate"),
        ({"aggregate": "global", "reduction": "none"}, "per_anchor"),
        ({"reduction": "avg"}, "reduction"),
        ({"pair_weights": torch.ones(3, 3)}, "pair_weights"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        circle_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), **kwargs)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="ref_labels"):
        circle_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), ref_emb=torch.randn(2, 3))
    with pytest.raises(ValueError, match="labels or an indices_tuple"):
        circle_loss(torch.randn(4, 3))
    with pytest.raises(ValueError, match="non-finite|finite"):
        circle_loss(torch.tensor([[math.nan, 1.0], [1.0, 0.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="indices_tuple"):
        circle_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), (torch.tensor([0]), torch.tensor([9])))
    with pytest.raises(ValueError, match="even width"):
        FineTripletLoss()(torch.rand(4, 5), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="relevance"):
        FineTripletLoss(relevance="cosine")
