"""Circle and fine triplet losses: float64 loops, pytorch-metric-learning, the public code, streaming, bad input."""

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning.losses import CircleLoss as PMLCircleLoss
from pytorch_metric_learning.miners import MultiSimilarityMiner, TripletMarginMiner

import qualcl.functional.circle as circle_module
from qualcl.functional import circle_loss, relevance_degrees
from qualcl.kernels import batch_hard_triplets
from qualcl.losses import CircleLoss, FineTripletLoss

f64 = torch.float64


# --------------------------------------------------------------------------------- the references
def _loop(
    emb,
    labels=None,
    ref=None,
    ref_labels=None,
    *,
    m,
    gamma,
    aggregate="per_anchor",
    w=None,
    anchor_w=None,
    pairs=None,
    detach_alpha=True,
    reduction="mean",
    alpha_at=None,
):
    """Explicit loops over anchors and references, built from float64 scalars (so autograd works).

    ``w`` is a nested list / (N, M) tensor of positive-pair weights (constants), ``pairs`` a pair
    ``(positive set, negative set)`` of ``(i, j)`` replacing the labels, ``alpha_at`` embeddings
    the ``alpha`` are computed from (frozen: the derivative of the detached loss).
    """
    own = ref is None
    ref = emb if own else ref
    ref_labels = labels if own else ref_labels
    n, mm = emb.shape[0], ref.shape[0]

    def unit(x):
        return x / torch.sqrt((x * x).sum())

    def cos(a, b, i, j):
        return (unit(a[i]) * unit(b[j])).sum()

    frozen_ref = None if alpha_at is None else (alpha_at[0] if own else alpha_at[1])
    frozen_emb = None if alpha_at is None else alpha_at[0]
    pos_terms, neg_terms, per_anchor = [], [], []
    for i in range(n):
        lp, ln = [], []
        for j in range(mm):
            if pairs is not None:
                is_pos, is_neg = (i, j) in pairs[0], (i, j) in pairs[1]
            else:
                if own and (j == i or (aggregate == "global" and j < i)):
                    continue
                is_pos = int(labels[i]) == int(ref_labels[j])
                is_neg = not is_pos
            s = cos(emb, ref, i, j)
            s_alpha = s if alpha_at is None else cos(frozen_emb, frozen_ref, i, j)
            if is_pos:
                alpha = torch.relu(1 + m - s_alpha)
                alpha = alpha.detach() if detach_alpha else alpha
                wij = 1.0 if w is None else float(w[i][j])
                lp.append(-gamma * wij * alpha * (s - (1 - m)))
            if is_neg:
                alpha = torch.relu(s_alpha + m)
                alpha = alpha.detach() if detach_alpha else alpha
                ln.append(gamma * alpha * (s - m))
        pos_terms += lp
        neg_terms += ln
        if lp and ln:
            lse_p = torch.logsumexp(torch.stack(lp), 0)
            lse_n = torch.logsumexp(torch.stack(ln), 0)
            per_anchor.append(torch.log1p(torch.exp(lse_p + lse_n)))
        else:
            per_anchor.append(None)
    zero = 0.0 * emb.sum()
    if aggregate == "global":
        if not pos_terms or not neg_terms:
            return zero
        # the public code's form: raw sums of exponentials (fine for the small gamma used here)
        return torch.log(1 + sum(torch.exp(x) for x in pos_terms) * sum(torch.exp(x) for x in neg_terms))
    wts = [
        (1.0 if anchor_w is None else float(anchor_w[i])) if v is not None else 0.0 for i, v in enumerate(per_anchor)
    ]
    vals = [zero if v is None else v for v in per_anchor]
    if reduction == "none":
        return torch.stack([wi * v for wi, v in zip(wts, vals, strict=True)])
    total = sum(wi * v for wi, v in zip(wts, vals, strict=True))
    if reduction == "sum":
        return total
    return total / sum(wts) if sum(wts) > 0 else zero


def _data(seed, n, d=6, classes=3, m=None):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=f64)
    labels = torch.randint(0, classes, (n,), generator=g)
    if m is None:
        return emb, labels, None, None
    return emb, labels, torch.randn(m, d, generator=g, dtype=f64), torch.randint(0, classes, (m,), generator=g)


def _grads(loss, inputs):
    """Gradients of ``loss`` w.r.t. ``inputs``; an input the loss does not use gets zeros."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if gr is None else gr for x, gr in zip(inputs, grads, strict=True)]


def _close(a, b, **kw):
    torch.testing.assert_close(a, b, **kw)


sizes = st.tuples(st.integers(2, 9), st.integers(1, 4), st.integers(0, 2**31 - 1))


# ------------------------------------------------------------------------------------ float64 loops
@settings(max_examples=25, deadline=None)
@given(
    sizes,
    st.sampled_from(["per_anchor", "global"]),
    st.sampled_from([None, "dense", "factors"]),
    st.booleans(),
    st.booleans(),
)
def test_matches_the_loop_values_and_gradients(case, aggregate, weighting, detach_alpha, with_ref):
    n, classes, seed = case
    emb, labels, ref, ref_labels = _data(seed, n, classes=classes, m=5 if with_ref else None)
    mm = 5 if with_ref else n
    g = torch.Generator().manual_seed(seed + 1)
    row, col = torch.rand(n, generator=g, dtype=f64) + 0.5, torch.rand(mm, generator=g, dtype=f64) + 0.5
    dense = row[:, None] * col[None, :]
    pair_weights = {None: None, "dense": dense, "factors": (row, col)}[weighting]
    emb.requires_grad_()
    inputs = [emb] if ref is None else [emb, ref.requires_grad_()]
    got = circle_loss(
        emb,
        labels,
        None,
        ref,
        ref_labels,
        margin=0.25,
        gamma=6.0,
        aggregate=aggregate,
        pair_weights=pair_weights,
        detach_alpha=detach_alpha,
    )
    want = _loop(
        emb,
        labels,
        ref,
        ref_labels,
        m=0.25,
        gamma=6.0,
        aggregate=aggregate,
        w=None if weighting is None else dense,
        detach_alpha=detach_alpha,
    )
    _close(got, want, rtol=1e-10, atol=1e-12)
    if want.requires_grad and want.grad_fn is not None:
        for a, b in zip(_grads(got, inputs), _grads(want, inputs), strict=True):
            _close(a, b, rtol=1e-9, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(sizes, st.sampled_from(["mean", "sum", "none"]), st.booleans())
def test_anchor_weights_and_reductions_match_the_loop(case, reduction, with_ref):
    n, classes, seed = case
    emb, labels, ref, ref_labels = _data(seed, n, classes=classes, m=4 if with_ref else None)
    anchor_w = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=f64)
    got = circle_loss(emb, labels, None, ref, ref_labels, gamma=3.0, weights=anchor_w, reduction=reduction)
    want = _loop(emb, labels, ref, ref_labels, m=0.25, gamma=3.0, anchor_w=anchor_w, reduction=reduction)
    _close(got, want, rtol=1e-10, atol=1e-12)


def _random_tuple(seed, n, mm, triplets):
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(0, 12, (1,), generator=g))
    a = torch.randint(0, n, (k,), generator=g)
    if triplets:
        return a, torch.randint(0, mm, (k,), generator=g), torch.randint(0, mm, (k,), generator=g)
    k2 = int(torch.randint(0, 12, (1,), generator=g))
    return (
        a,
        torch.randint(0, mm, (k,), generator=g),
        torch.randint(0, n, (k2,), generator=g),
        torch.randint(0, mm, (k2,), generator=g),
    )


def _pair_sets(tuple_):
    if len(tuple_) == 3:
        tuple_ = (tuple_[0], tuple_[1], tuple_[0], tuple_[2])
    a1, p, a2, n = (t.tolist() for t in tuple_)
    return set(zip(a1, p, strict=True)), set(zip(a2, n, strict=True))


@settings(max_examples=25, deadline=None)
@given(sizes, st.booleans(), st.booleans(), st.sampled_from(["per_anchor", "global"]), st.booleans())
def test_indices_tuple_matches_the_loop(case, triplets, with_ref, aggregate, detach_alpha):
    n, classes, seed = case
    emb, _, ref, _ = _data(seed, n, classes=classes, m=4 if with_ref else None)
    mm = 4 if with_ref else n
    tuple_ = _random_tuple(seed, n, mm, triplets)
    row = torch.rand(n, dtype=f64) + 0.5
    col = torch.rand(mm, dtype=f64) + 0.5
    emb.requires_grad_()
    got = circle_loss(
        emb,
        None,  # labels are optional with an indices_tuple (ref_labels too)
        tuple_,
        ref,
        None,
        gamma=5.0,
        aggregate=aggregate,
        pair_weights=(row, col),
        detach_alpha=detach_alpha,
    )
    want = _loop(
        emb,
        None,
        ref,
        None,
        m=0.25,
        gamma=5.0,
        aggregate=aggregate,
        pairs=_pair_sets(tuple_),
        w=row[:, None] * col[None, :],
        detach_alpha=detach_alpha,
    )
    _close(got, want, rtol=1e-10, atol=1e-12)
    assert got.requires_grad
    if want.grad_fn is not None:
        _close(_grads(got, [emb])[0], _grads(want, [emb])[0], rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("aggregate", ["per_anchor", "global"])
@pytest.mark.parametrize("path", ["dense", "streamed", "indices"])
def test_gradcheck_without_detached_alpha(aggregate, path):
    # detach_alpha=False: the loss is an ordinary function, finite differences see all of it
    emb, labels, ref, ref_labels = _data(2, 7, d=4, m=5)
    tuple_ = batch_hard_triplets(emb, labels, ref, ref_labels)
    factors = (torch.rand(7, dtype=f64) + 0.5, torch.rand(5, dtype=f64) + 0.5)

    def f(x, r):
        return circle_loss(
            x,
            labels,
            tuple_ if path == "indices" else None,
            r,
            ref_labels,
            gamma=3.0,
            aggregate=aggregate,
            detach_alpha=False,
            pair_weights=factors,
            chunk_size=2 if path == "streamed" else None,
        )

    assert torch.autograd.gradcheck(f, (emb.requires_grad_(), ref.requires_grad_()))


@pytest.mark.parametrize("aggregate", ["per_anchor", "global"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_detached_alpha_gradient_is_the_frozen_alpha_derivative(aggregate, chunk):
    # with detach_alpha=True the gradient is that of the loss with alpha frozen at the current point:
    # central differences of the loop with alpha computed from the fixed embeddings
    emb, labels, _, _ = _data(5, 6, d=3)
    x = emb.clone().requires_grad_()
    got = circle_loss(x, labels, gamma=4.0, aggregate=aggregate, chunk_size=chunk)
    (grad,) = torch.autograd.grad(got, x)
    numeric = torch.zeros_like(emb)
    h = 1e-6
    for idx in range(emb.numel()):
        e = torch.zeros(emb.numel(), dtype=f64)
        e[idx] = h
        e = e.view_as(emb)
        up = _loop(emb + e, labels, m=0.25, gamma=4.0, aggregate=aggregate, alpha_at=(emb,))
        down = _loop(emb - e, labels, m=0.25, gamma=4.0, aggregate=aggregate, alpha_at=(emb,))
        numeric.view(-1)[idx] = (up - down) / (2 * h)
    _close(grad, numeric, rtol=1e-6, atol=1e-8)
    # and it differs from the full derivative (the test can tell the two apart)
    full = torch.autograd.grad(circle_loss(x, labels, gamma=4.0, aggregate=aggregate, detach_alpha=False), x)[0]
    assert not torch.allclose(grad, full, rtol=1e-3)


@pytest.mark.parametrize("chunk", [None, 2])
def test_no_gradient_reaches_pair_weights(chunk):
    emb, labels, _, _ = _data(3, 8)
    emb.requires_grad_()
    dense = torch.rand(8, 8, dtype=f64, requires_grad=True)
    row, col = torch.rand(8, dtype=f64, requires_grad=True), torch.rand(8, dtype=f64, requires_grad=True)
    for pw in (dense, (row, col)):
        circle_loss(emb, labels, gamma=4.0, pair_weights=pw, chunk_size=chunk).backward()
    assert dense.grad is None and row.grad is None and col.grad is None
    assert emb.grad is not None and bool(emb.grad.abs().sum() > 0)
    degrees = (torch.rand(8, dtype=f64) + 0.1).requires_grad_()
    FineTripletLoss(scale=4.0, chunk_size=chunk)(emb, labels, degrees=degrees).backward()
    assert degrees.grad is None


# --------------------------------------------------------------------- pytorch-metric-learning
@settings(max_examples=25, deadline=None)
@given(
    st.integers(3, 40),
    st.integers(1, 6),
    st.integers(0, 2**31 - 1),
    st.booleans(),
    st.sampled_from([(0.4, 80.0), (0.25, 256.0), (0.1, 32.0)]),
)
def test_equals_pml_values_and_gradients(n, classes, seed, with_ref, setting):
    m, gamma = setting
    emb, labels, ref, ref_labels = _data(seed, n, d=8, classes=classes, m=9 if with_ref else None)
    emb = (emb * 0.2 + 1.0).requires_grad_()  # concentrated directions: large logits at gamma = 256
    inputs = [emb]
    if ref is not None:
        ref = (ref * 0.2 + 1.0).requires_grad_()
        inputs.append(ref)
    theirs = PMLCircleLoss(m=m, gamma=gamma)(emb, labels, ref_emb=ref, ref_labels=ref_labels)
    their_grads = _grads(theirs, inputs) if theirs.requires_grad else None
    for chunk in (None, 4):
        ours = CircleLoss(m=m, gamma=gamma, chunk_size=chunk)(emb, labels, ref_emb=ref, ref_labels=ref_labels)
        _close(ours, theirs.detach(), rtol=1e-10, atol=1e-10)
        if their_grads is not None:
            for a, b in zip(_grads(ours, inputs), their_grads, strict=True):
                _close(a, b, rtol=1e-8, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(st.integers(6, 40), st.integers(2, 5), st.integers(0, 2**31 - 1), st.sampled_from(["ms", "triplet", "hard"]))
def test_equals_pml_with_mined_tuples(n, classes, seed, miner):
    emb, labels, _, _ = _data(seed, n, d=8, classes=classes)
    emb.requires_grad_()
    if miner == "ms":
        tuple_ = MultiSimilarityMiner(epsilon=0.3)(emb, labels)
    elif miner == "triplet":
        tuple_ = TripletMarginMiner(margin=0.3, type_of_triplets="semihard")(emb, labels)
    else:
        tuple_ = batch_hard_triplets(emb.detach(), labels)
    theirs = PMLCircleLoss(m=0.25, gamma=80)(emb, labels, indices_tuple=tuple_)
    ours = CircleLoss(gamma=80.0)(emb, labels, indices_tuple=tuple_)
    _close(ours, theirs, rtol=1e-10, atol=1e-10)
    if theirs.requires_grad:
        # γ = 80 scales rounding differences of the two log-sum-exp orders: up to ~4e-8 relative in float64
        _close(_grads(ours, [emb])[0], _grads(theirs, [emb])[0], rtol=1e-6, atol=1e-8)


def test_equals_pml_in_float32_at_gamma_256():
    g = torch.Generator().manual_seed(7)
    emb = (torch.randn(64, 16, generator=g) * 0.1 + 1.0).requires_grad_()
    ref = (torch.randn(48, 16, generator=g) * 0.1 + 1.0).requires_grad_()
    labels, ref_labels = torch.randint(0, 5, (64,), generator=g), torch.randint(0, 5, (48,), generator=g)
    for r, rl in ((None, None), (ref, ref_labels)):
        inputs = [emb] if r is None else [emb, r]
        theirs = PMLCircleLoss(m=0.25, gamma=256)(emb, labels, ref_emb=r, ref_labels=rl)
        their_grads = _grads(theirs, inputs)
        for chunk in (None, 16):
            ours = CircleLoss(chunk_size=chunk)(emb, labels, ref_emb=r, ref_labels=rl)
            assert ours.dtype == torch.float32
            _close(ours, theirs.detach(), rtol=1e-5, atol=1e-5)
            for a, b in zip(_grads(ours, inputs), their_grads, strict=True):
                _close(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------ the public FundusDR code
def _public_code(feats, labels, *, scale=1.0, margin=0.25, degrees=None):
    """FundusDR's ``FineTripletLoss.forward`` (nets/MANet.py) transcribed literally, with its deg_mat.

    Labels are one-hot as there; ``degrees`` switches on the (later commented-out) relevance
    weights ``deg_mat = (1/degs) ⊗ degs`` masked to the positives.
    """
    labels = F.one_hot(labels).to(feats.dtype)
    mask = torch.matmul(labels, torch.t(labels))
    pos_mask = mask.triu(diagonal=1)
    neg_mask = (mask - 1).abs_().triu(diagonal=1)
    feats = F.normalize(feats)
    sim_mat = feats.mm(feats.t())
    pos_pair_ = sim_mat[pos_mask == 1]
    neg_pair_ = sim_mat[neg_mask == 1]
    alpha_p = torch.relu(-pos_pair_ + 1 + margin)
    alpha_n = torch.relu(neg_pair_ + margin)
    margin_p = 1 - margin
    margin_n = margin
    if degrees is None:
        loss_p = torch.sum(torch.exp(-scale * alpha_p * (pos_pair_ - margin_p)))
    else:
        degs = torch.unsqueeze(degrees, 1)
        deg_mat = torch.mm(1 / degs, torch.t(degs))
        deg_mat = deg_mat.mul(mask)
        pos_pair_deg = deg_mat[pos_mask == 1]
        loss_p = torch.sum(torch.exp(-scale * pos_pair_deg * alpha_p * (pos_pair_ - margin_p)))
    loss_n = torch.sum(torch.exp(scale * alpha_n * (neg_pair_ - margin_n)))
    return torch.log(1 + loss_p * loss_n)


@pytest.mark.parametrize("chunk", [None, 5])
def test_global_form_is_the_public_code(chunk):
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(16, 12, generator=g, dtype=f64, requires_grad=True)  # GeM descriptors are positive
    labels = torch.randint(0, 3, (16,), generator=g)
    ours = CircleLoss(m=0.25, gamma=1.0, aggregate="global", detach_alpha=False, chunk_size=chunk)(feats, labels)
    theirs = _public_code(feats, labels)
    _close(ours, theirs, rtol=1e-12, atol=1e-14)
    _close(_grads(ours, [feats])[0], _grads(theirs, [feats])[0], rtol=1e-10, atol=1e-14)
    # the relevance weights: the code's degs (halves of the normalised descriptor), detached here
    degs = feats.detach().view(16, 2, 6)
    degs = F.cosine_similarity(F.normalize(feats.detach()).view(16, 2, 6)[:, 0], degs[:, 1])
    fine = FineTripletLoss(detach_alpha=False, chunk_size=chunk)(feats, labels)
    code = _public_code(feats, labels, degrees=degs)
    code_grad = _grads(code, [feats])[0]
    _close(fine, code.detach(), rtol=1e-12, atol=1e-14)
    _close(_grads(fine, [feats])[0], code_grad, rtol=1e-10, atol=1e-14)
    # its default (detached alpha) differs from the code only in the gradient
    detached = FineTripletLoss(chunk_size=chunk)(feats, labels)
    _close(detached, code.detach(), rtol=1e-12, atol=1e-14)
    assert not torch.allclose(_grads(detached, [feats])[0], code_grad)


@pytest.mark.parametrize("relevance", ["mirror_agreement", "symmetric", None])
@pytest.mark.parametrize("aggregate", ["per_anchor", "global"])
def test_fine_weights_match_the_loop(relevance, aggregate):
    g = torch.Generator().manual_seed(1)
    feats = torch.rand(10, 8, generator=g, dtype=f64)
    labels = torch.randint(0, 3, (10,), generator=g)
    deg = relevance_degrees(feats)
    loop = torch.tensor([float(F.cosine_similarity(f[:4], f[4:], dim=0)) for f in feats], dtype=f64)
    _close(deg, loop)
    if relevance == "mirror_agreement":
        w = [[float(deg[j] / deg[i]) for j in range(10)] for i in range(10)]
    elif relevance == "symmetric":
        w = [[math.sqrt(float(deg[i] * deg[j])) for j in range(10)] for i in range(10)]
    else:
        w = None
    for chunk in (None, 3):
        got = FineTripletLoss(scale=5.0, relevance=relevance, aggregate=aggregate, chunk_size=chunk)(feats, labels)
        want = _loop(feats, labels, m=0.25, gamma=5.0, aggregate=aggregate, w=w)
        _close(got, want, rtol=1e-10, atol=1e-12)


def test_fine_triplet_with_a_reference_set_and_explicit_degrees():
    g = torch.Generator().manual_seed(4)
    feats, ref = torch.rand(7, 6, generator=g, dtype=f64), torch.rand(5, 6, generator=g, dtype=f64)
    labels, ref_labels = torch.randint(0, 2, (7,), generator=g), torch.randint(0, 2, (5,), generator=g)
    deg, ref_deg = relevance_degrees(feats), relevance_degrees(ref)
    w = [[float(ref_deg[j] / deg[i]) for j in range(5)] for i in range(7)]
    loss = FineTripletLoss(scale=3.0, aggregate="per_anchor")
    want = _loop(feats, labels, ref, ref_labels, m=0.25, gamma=3.0, w=w)
    _close(loss(feats, labels, ref_emb=ref, ref_labels=ref_labels), want, rtol=1e-10, atol=1e-12)
    # explicit degrees replace the computed ones (and need no even width)
    d, rd = torch.rand(7, dtype=f64) + 0.2, torch.rand(5, dtype=f64) + 0.2
    w = [[float(rd[j] / d[i]) for j in range(5)] for i in range(7)]
    got = loss(feats[:, :5], labels, ref_emb=ref[:, :5], ref_labels=ref_labels, degrees=d, ref_degrees=rd)
    _close(got, _loop(feats[:, :5], labels, ref[:, :5], ref_labels, m=0.25, gamma=3.0, w=w), rtol=1e-10, atol=1e-12)


def test_relevance_degrees_are_clamped_and_detached():
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0], [1.0, 0.0, -1.0, 0.0]], requires_grad=True)
    deg = relevance_degrees(x, eps=1e-3)
    assert not deg.requires_grad
    _close(deg, torch.tensor([1.0, 1e-3, 1e-3]))


# ------------------------------------------------------------------------------ streaming == dense
def _streamed_node(loss):
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "_StreamedRowLSE" in type(node).__name__:
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


@settings(max_examples=25, deadline=None)
@given(
    st.integers(3, 30),
    st.integers(1, 9),
    st.integers(0, 2**31 - 1),
    st.sampled_from([1 << 20, 7, 1]),
    st.sampled_from([None, "dense", "factors"]),
    st.booleans(),
    st.booleans(),
)
def test_streaming_equals_dense(n, chunk, seed, block, weighting, detach_alpha, with_ref):
    emb, labels, ref, ref_labels = _data(seed, n, d=5, m=11 if with_ref else None)
    emb.requires_grad_()
    inputs = [emb] if ref is None else [emb, ref.requires_grad_()]
    mm = 11 if with_ref else n
    g = torch.Generator().manual_seed(seed)
    row, col = torch.rand(n, generator=g, dtype=f64) + 0.5, torch.rand(mm, generator=g, dtype=f64)
    pw = {None: None, "dense": row[:, None] * col[None, :], "factors": (row, col)}[weighting]
    for aggregate in ("per_anchor", "global"):
        kw = dict(gamma=8.0, aggregate=aggregate, pair_weights=pw, detach_alpha=detach_alpha)
        dense = circle_loss(emb, labels, None, ref, ref_labels, **kw)
        with mock.patch.object(circle_module, "BLOCK_ELEMENTS", block):  # rows per block: block // chunk
            streamed = circle_loss(emb, labels, None, ref, ref_labels, chunk_size=chunk, **kw)
            assert _streamed_node(streamed) and not _streamed_node(dense)
            grads = _grads(streamed, inputs)
        _close(streamed, dense, rtol=1e-10, atol=1e-12)
        for a, b in zip(grads, _grads(dense, inputs), strict=True):
            _close(a, b, rtol=1e-10, atol=1e-12)


def test_streams_beyond_the_size_threshold():
    emb, labels, _, _ = _data(0, 12)
    emb.requires_grad_()
    assert not _streamed_node(circle_loss(emb, labels))
    with mock.patch.object(circle_module, "STREAM_ABOVE", 12 * 12 - 1):
        streamed = circle_loss(emb, labels)
    assert _streamed_node(streamed)
    _close(streamed, circle_loss(emb, labels), rtol=1e-12, atol=1e-12)


def test_half_precision_is_computed_in_float32():
    emb, labels, _, _ = _data(1, 20, d=8)
    want = circle_loss(emb.float(), labels, gamma=32.0)
    got = circle_loss(emb.bfloat16(), labels, gamma=32.0)
    assert got.dtype == torch.float32
    _close(got, want, rtol=5e-2, atol=5e-2)


# ------------------------------------------------------------------------------------ degenerate
@pytest.mark.parametrize("chunk", [None, 2])
def test_anchors_without_positive_or_negative(chunk):
    emb, _, _, _ = _data(0, 5, d=4)
    labels = torch.tensor([0, 0, 1, 2, 3])  # anchors 2, 3, 4 have no positive
    per = circle_loss(emb, labels, reduction="none", gamma=4.0, chunk_size=chunk)
    assert per.shape == (5,)
    assert per[2:].tolist() == [0.0, 0.0, 0.0] and bool((per[:2] > 0).all())
    mean = circle_loss(emb, labels, gamma=4.0, chunk_size=chunk)
    _close(mean, per[:2].mean())  # the mean is over the two anchors that have both
    _close(mean, _loop(emb, labels, m=0.25, gamma=4.0))


@pytest.mark.parametrize("aggregate", ["per_anchor", "global"])
@pytest.mark.parametrize("path", ["dense", "streamed", "indices", "empty_indices"])
def test_nothing_to_contrast_gives_an_attached_zero(aggregate, path):
    emb = torch.randn(5, 4, requires_grad=True)
    same = torch.zeros(5, dtype=torch.long)
    empty = torch.zeros(0, dtype=torch.long)
    tuple_ = {
        "indices": (torch.tensor([0, 1]), torch.tensor([1, 2]), empty, empty),  # positives only
        "empty_indices": (empty, empty, empty),
    }.get(path)
    loss = circle_loss(emb, same, tuple_, aggregate=aggregate, chunk_size=2 if path == "streamed" else None)
    assert loss.shape == () and float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert emb.grad is not None and float(emb.grad.abs().sum()) == 0.0


def test_single_row():
    emb = torch.randn(1, 4, requires_grad=True)
    loss = circle_loss(emb, torch.tensor([3]))
    assert float(loss.detach()) == 0.0 and loss.requires_grad


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"margin": -0.1}, "margin"),
        ({"margin": 1.5}, "margin"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": -2.0}, "gamma"),
        ({"aggregate": "mean"}, "aggregate"),
        ({"aggregate": "global", "reduction": "none"}, "reduction='none' needs aggregate='per_anchor'"),
        ({"aggregate": "global", "weights": torch.ones(4)}, "weights"),
        ({"reduction": "avg"}, "reduction"),
        ({"pair_weights": torch.ones(3, 3)}, "pair_weights"),
        ({"pair_weights": -torch.ones(4, 4)}, "non-negative"),
        ({"pair_weights": (torch.ones(4),)}, "pair_weights"),
        ({"pair_weights": (torch.ones(4), torch.ones(3))}, r"pair_weights\[1\]"),
        ({"weights": torch.ones(3)}, "weights"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        circle_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), **kwargs)


def test_bad_inputs_are_named():
    x, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="ref_labels"):
        circle_loss(x, y, ref_emb=torch.randn(2, 3))
    with pytest.raises(ValueError, match="ref_labels without ref_emb"):
        circle_loss(x, y, ref_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="ref_emb must have D = 3"):
        circle_loss(x, y, ref_emb=torch.randn(2, 5), ref_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="ref_labels must have shape"):
        circle_loss(x, y, ref_emb=torch.randn(2, 3), ref_labels=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="labels must have shape"):
        circle_loss(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels or an indices_tuple"):
        circle_loss(x)
    with pytest.raises(ValueError, match="embeddings contains 1 non-finite"):
        circle_loss(torch.tensor([[math.nan, 1.0], [1.0, 0.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="all-zero"):
        circle_loss(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="embeddings must have shape"):
        circle_loss(torch.randn(4), y)
    with pytest.raises(ValueError, match="indices_tuple must be a pair tuple"):
        circle_loss(x, y, (torch.tensor([0]), torch.tensor([1])))
    with pytest.raises(ValueError, match="indices_tuple positives must lie in"):
        circle_loss(x, y, (torch.tensor([0]), torch.tensor([9]), torch.tensor([1])))
    with pytest.raises(ValueError, match="equal lengths"):
        circle_loss(x, y, (torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2])))
    with pytest.raises(TypeError, match="indices_tuple"):
        circle_loss(x, y, (torch.tensor([0.0]), torch.tensor([1]), torch.tensor([2])))


def test_module_arguments_are_checked():
    with pytest.raises(ValueError, match="m must"):
        CircleLoss(m=-1.0)
    with pytest.raises(ValueError, match="margin must"):
        FineTripletLoss(margin=1.5)
    with pytest.raises(ValueError, match="gamma"):
        CircleLoss(gamma=0.0)
    with pytest.raises(ValueError, match="aggregate"):
        CircleLoss(aggregate="sum")
    with pytest.raises(ValueError, match="reduction='none' needs"):
        CircleLoss(aggregate="global", reduction="none")
    with pytest.raises(ValueError, match="chunk_size"):
        CircleLoss(chunk_size=0)
    with pytest.raises(ValueError, match="relevance"):
        FineTripletLoss(relevance="cosine")
    with pytest.raises(ValueError, match="scale"):
        FineTripletLoss(scale=0.0)
    with pytest.raises(ValueError, match="reduction='none' needs"):
        FineTripletLoss(reduction="none")
    assert "gamma=256.0" in repr(CircleLoss()) and "relevance='mirror_agreement'" in repr(FineTripletLoss())


def test_fine_triplet_inputs_are_checked():
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="even width"):
        FineTripletLoss()(torch.rand(4, 5), y)
    FineTripletLoss(relevance=None)(torch.rand(4, 5), y)  # no halves needed without relevance
    with pytest.raises(ValueError, match=r"degrees must have shape \(4,\)"):
        FineTripletLoss()(torch.rand(4, 6), y, degrees=torch.ones(3))
    with pytest.raises(ValueError, match="degrees must be finite and > 0"):
        FineTripletLoss()(torch.rand(4, 6), y, degrees=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="ref_degrees without ref_emb"):
        FineTripletLoss()(torch.rand(4, 6), y, ref_degrees=torch.ones(4))
    with pytest.raises(ValueError, match="even width"):
        FineTripletLoss()(torch.rand(4, 6), y, ref_emb=torch.rand(2, 5), ref_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="eps"):
        relevance_degrees(torch.rand(4, 6), eps=0.0)


def test_module_equals_functional():
    emb, labels, ref, ref_labels = _data(9, 12, m=7)
    w = torch.rand(12, dtype=f64)
    kw = dict(gamma=20.0, aggregate="per_anchor", detach_alpha=False, reduction="sum")
    factors = (w, torch.ones(7, dtype=f64))
    got = CircleLoss(m=0.3, **kw)(emb, labels, None, ref, ref_labels, weights=w, pair_weights=factors)
    want = circle_loss(emb, labels, None, ref, ref_labels, margin=0.3, weights=w, pair_weights=factors, **kw)
    _close(got, want, rtol=0, atol=0)


# ------------------------------------------------------------------ pytorch-metric-learning's names
def test_pml_argument_names_and_defaults():
    emb, labels, _, _ = _data(11, 20, d=8)
    emb = emb * 0.3 + 1.0
    _close(CircleLoss(m=0.4, gamma=80)(emb, labels), PMLCircleLoss()(emb, labels), rtol=1e-10, atol=1e-10)
    loss = CircleLoss()
    assert (loss.m, loss.gamma) == (0.25, 256.0)
    with pytest.raises(TypeError, match="margin"):
        CircleLoss(margin=0.4)  # PML's name is m; qualcl's old name is not kept as an alias


def test_pml_mean_differs_only_when_an_anchor_loss_rounds_to_zero():
    # each anchor's loss is at least softplus(-2 γ m²): in float32 it can round to 0 only for γ m² above ~52,
    # and then PML's AvgNonZeroReducer leaves the anchor out of the mean while qualcl counts it
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]) + torch.tensor([[0.0, 0.05]])
    labels = torch.tensor([0, 0, 1, 1])
    for m, gamma, equal in ((0.25, 256.0, True), (0.5, 256.0, False)):
        per = CircleLoss(m=m, gamma=gamma, reduction="none")(emb, labels)
        theirs = PMLCircleLoss(m=m, gamma=gamma)(emb, labels)
        ours = CircleLoss(m=m, gamma=gamma)(emb, labels)
        assert bool((per == 0).any()) == (not equal)
        assert (gamma * m * m < 52) == equal
        if equal:
            _close(ours, theirs, rtol=1e-5, atol=1e-30)
        else:
            _close(ours * 4, theirs * int((per > 0).sum()), rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("loss_cls", [CircleLoss, FineTripletLoss])
def test_distance_is_cosine_only(loss_cls):
    assert loss_cls(distance="cosine").distance == "cosine"
    for distance in ("euclidean", "euclidean_raw"):
        with pytest.raises(ValueError, match="distance must be 'cosine' for the circle loss.*CosineSimilarity"):
            loss_cls(distance=distance)
    with pytest.raises(ValueError, match="distance must be one of"):
        loss_cls(distance="manhattan")


def test_protocol_family_and_global_weights_refused():
    assert CircleLoss.family == FineTripletLoss.family == "metric"
    assert CircleLoss.batch_global and FineTripletLoss.batch_global
    emb, labels, _, _ = _data(1, 6)
    with pytest.raises(ValueError, match="weights"):
        FineTripletLoss(relevance=None)(emb, labels, weights=torch.ones(6, dtype=f64))
    with pytest.raises(ValueError, match="weights"):
        CircleLoss(aggregate="global")(emb, labels, weights=torch.ones(6, dtype=f64))
    assert "gather_distributed=False" in repr(CircleLoss()) and "reduction='mean'" in repr(FineTripletLoss())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fine_triplet_weights_match_the_loop(reduction):
    g = torch.Generator().manual_seed(2)
    feats, labels = torch.rand(9, 6, generator=g, dtype=f64), torch.randint(0, 3, (9,), generator=g)
    anchor_w = torch.rand(9, generator=g, dtype=f64)
    deg = relevance_degrees(feats)
    w = [[float(deg[j] / deg[i]) for j in range(9)] for i in range(9)]
    got = FineTripletLoss(scale=4.0, aggregate="per_anchor", reduction=reduction)(feats, labels, weights=anchor_w)
    want = _loop(feats, labels, m=0.25, gamma=4.0, w=w, anchor_w=anchor_w, reduction=reduction)
    _close(got, want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------- DDP (gloo)
WORLD = 2


def _split(length, rank):
    from losscases import split_rows

    return split_rows(length, rank, WORLD)


def _local_tuple(rank, n, m):
    """Each rank's own mined pairs, local indices (anchors < n, positives / negatives < m)."""
    g = torch.Generator().manual_seed(100 + rank)
    return (
        torch.randint(0, n, (9,), generator=g),
        torch.randint(0, m, (9,), generator=g),
        torch.randint(0, n, (12,), generator=g),
        torch.randint(0, m, (12,), generator=g),
    )


def _concatenated_tuple(n, m):
    """One process's equivalent: every rank's tuple, each shifted by its rank's offsets."""
    parts = []
    for r in range(WORLD):
        rows, cols = _split(n, r), _split(m, r)
        a1, p, a2, ng = _local_tuple(r, rows.stop - rows.start, cols.stop - cols.start)
        parts.append((a1 + rows.start, p + cols.start, a2 + rows.start, ng + cols.start))
    return tuple(torch.cat(t) for t in zip(*parts, strict=True))


def _own(g):
    return [torch.randn(16, 5, generator=g, dtype=f64), torch.randint(0, 3, (16,), generator=g)]


def _with_ref(g):
    return [*_own(g), torch.randn(11, 5, generator=g, dtype=f64), torch.randint(0, 3, (11,), generator=g)]


def _descriptors(g):
    return [torch.rand(16, 8, generator=g, dtype=f64) + 0.05, torch.randint(0, 3, (16,), generator=g)]


def _indices_call(loss, rows, where):
    emb, ref = rows[0], rows[2]
    if where is None:
        tuple_ = _concatenated_tuple(emb.shape[0], ref.shape[0])
    else:
        tuple_ = _local_tuple(where, emb.shape[0], ref.shape[0])
    return loss(emb, None, tuple_, ref)


def _own_indices_call(loss, rows, where):
    emb = rows[0]
    tuple_ = _concatenated_tuple(16, 16) if where is None else _local_tuple(where, emb.shape[0], emb.shape[0])
    return loss(emb, rows[1], tuple_)


# name: (build(**protocol), rows(generator), call(loss, rows, rank or None for the one process))
DDP_CASES = {
    "circle_global": (
        lambda **kw: CircleLoss(m=0.25, gamma=4.0, aggregate="global", detach_alpha=False, **kw),
        _own,
        lambda loss, rows, where: loss(rows[0], rows[1]),
    ),
    "circle_global_streamed_ref": (
        lambda **kw: CircleLoss(m=0.3, gamma=6.0, aggregate="global", chunk_size=3, **kw),
        _with_ref,
        lambda loss, rows, where: loss(rows[0], rows[1], ref_emb=rows[2], ref_labels=rows[3]),
    ),
    "circle_global_streamed_own": (
        lambda **kw: CircleLoss(m=0.25, gamma=6.0, aggregate="global", chunk_size=3, **kw),
        _own,
        lambda loss, rows, where: loss(rows[0], rows[1]),
    ),
    "fine_triplet_global": (  # the public code's settings (undetached alpha, scale 1)
        lambda **kw: FineTripletLoss(detach_alpha=False, **kw),
        _descriptors,
        lambda loss, rows, where: loss(rows[0], rows[1]),
    ),
    "fine_triplet_global_streamed": (
        lambda **kw: FineTripletLoss(scale=4.0, relevance="symmetric", chunk_size=3, **kw),
        _descriptors,
        lambda loss, rows, where: loss(rows[0], rows[1]),
    ),
    "fine_triplet_degrees": (
        lambda **kw: FineTripletLoss(scale=4.0, aggregate="per_anchor", **kw),
        lambda g: [*_with_ref(g), torch.rand(16, generator=g, dtype=f64) + 0.2, torch.rand(11, generator=g, dtype=f64)],
        lambda loss, rows, where: loss(
            rows[0],
            rows[1],
            ref_emb=rows[2],
            ref_labels=rows[3],
            degrees=rows[4].detach(),
            ref_degrees=rows[5].detach(),
        ),
    ),
    "circle_indices_ref": (
        lambda **kw: CircleLoss(m=0.25, gamma=8.0, **kw),
        _with_ref,
        _indices_call,
    ),
    "circle_indices_global": (
        lambda **kw: CircleLoss(m=0.25, gamma=4.0, aggregate="global", **kw),
        _own,
        _own_indices_call,
    ),
    "circle_indices_own": (
        lambda **kw: CircleLoss(m=0.25, gamma=8.0, **kw),
        _own,
        _own_indices_call,
    ),
    "circle_dense_pair_weights": (  # (N, M) over the gathered columns: each rank holds its rows of it
        lambda **kw: CircleLoss(m=0.25, gamma=8.0, **kw),
        lambda g: [*_with_ref(g), torch.rand(16, 11, generator=g, dtype=f64) + 0.5],
        lambda loss, rows, where: loss(
            rows[0], rows[1], ref_emb=rows[2], ref_labels=rows[3], pair_weights=rows[4].detach()
        ),
    ),
}


def _ddp_work():
    from qualcl.distributed import rank

    me = rank()
    results = {}
    for name, (build, make_rows, call) in DDP_CASES.items():
        for reduction in ("mean", "sum"):
            rows = make_rows(torch.Generator().manual_seed(5))
            local = [t[_split(t.shape[0], me)].clone() for t in rows]
            full = [t.clone() for t in rows]
            for t in (*local, *full):
                t.requires_grad_(t.is_floating_point())
            value = call(build(reduction=reduction, gather_distributed=True), local, me)
            value.backward()
            single = call(build(reduction=reduction), full, None)
            single.backward()
            total = value.detach().clone()
            torch.distributed.all_reduce(total)
            out = {"value (mean over ranks)": (total / WORLD, single.detach())}
            if "global" in name:
                out["value (this rank)"] = (value.detach(), single.detach())
            for i, (lt, ft) in enumerate(zip(local, full, strict=True)):
                if lt.is_floating_point() and (lt.grad is not None or ft.grad is not None):
                    got = torch.zeros_like(lt) if lt.grad is None else lt.grad / WORLD  # DDP averages
                    want = torch.zeros_like(ft) if ft.grad is None else ft.grad
                    out[f"grad of input {i}"] = (got, want[_split(ft.shape[0], me)])
            results[f"{name}/{reduction}"] = out
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    from gloo import run_on_ranks

    return run_on_ranks(_ddp_work, WORLD, tmp_path_factory.mktemp("circle_ddp"))


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(DDP_CASES))
def test_two_gloo_ranks_equal_one_process(two_ranks, name):
    # global: every rank returns the one global value; per anchor: the exact cross-rank mean;
    # indices_tuple: each rank's local indices equal one process on the concatenated, shifted tuples
    for r, per_rank in enumerate(two_ranks):
        for reduction in ("mean", "sum"):
            for what, (got, want) in per_rank[f"{name}/{reduction}"].items():
                assert float(want.abs().sum()) > 0 or "grad" in what
                torch.testing.assert_close(
                    got, want, msg=lambda m, r=r, w=what, red=reduction: f"rank {r}, {red}, {w}: {m}"
                )
