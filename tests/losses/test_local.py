"""Local discrimination's losses against float64 loops, their gradients, streaming and properties."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import reference
from qualcl.functional import (
    assignment_entropy,
    grid_items,
    mixup_consistency,
    mixup_targets,
    patch_discrimination,
    patch_grid,
    region_discrimination,
    region_features,
    soft_dice_loss,
)
from qualcl.functional.local import REGION_EPS, patch_discrimination_rows
from qualcl.losses import MixupConsistencyLoss, PatchDiscriminationLoss, RegionDiscriminationLoss


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _assignments(seed: int, n: int, k: int, h: int, w: int) -> torch.Tensor:
    return torch.softmax(2 * _randn(seed, n, k, h, w), dim=1)


def _code_criterion(features: torch.Tensor, tau: float, detach: bool = True) -> torch.Tensor:
    """A dense autograd transliteration of the code's BatchCriterion(negM=1): partners and columns read via .data."""
    x = F.normalize(features, dim=1)
    c = x.detach() if detach else x
    n = x.shape[0]
    partner = torch.cat([torch.arange(n // 2, n), torch.arange(n // 2)])
    all_prob = torch.exp(x @ c.T / tau) * (1 - torch.eye(n, dtype=x.dtype))
    z = all_prob.sum(1)
    pos = torch.exp((x * c[partner]).sum(1) / tau) / z
    log_neg = torch.log(1 - all_prob / z[:, None]).sum(1) - torch.log(1 - pos)
    return -(torch.log(pos).sum() + log_neg.sum()) / n


sizes = st.tuples(st.integers(1, 8), st.integers(1, 6), st.integers(0, 2**31 - 1))


@given(sizes, st.sampled_from([0.1, 0.5, 1.0]))
def test_patch_discrimination_matches_the_loop_reference(case, tau):
    half, d, seed = case
    features = _randn(seed, 2 * half, d)
    got = patch_discrimination(features, temperature=tau)
    assert got.dtype == torch.float64
    # 1 - P of a dominant column cancels (in both): relative accuracy ~eps / (1 - P), hence 1e-7
    assert math.isclose(float(got), reference.patch_discrimination(features, tau), rel_tol=1e-7, abs_tol=1e-12)


@given(sizes, st.integers(1, 16))
def test_every_block_size_gives_the_dense_value_and_gradient(case, block):
    half, d, seed = case
    features = _randn(seed, 2 * half, d).requires_grad_()
    dense = patch_discrimination(features)
    (grad_dense,) = torch.autograd.grad(dense, features)
    blocked = patch_discrimination(features, block_size=block)
    (grad_blocked,) = torch.autograd.grad(blocked, features)
    torch.testing.assert_close(blocked, dense)
    torch.testing.assert_close(grad_blocked, grad_dense)


def _row_reference(anchors: torch.Tensor, columns: torch.Tensor, own: list[int], partner: list[int], tau: float):
    """Per-row criterion by loops, float64: anchor i against every column but own[i], positive partner[i]."""
    unit = F.normalize(columns, dim=1).tolist()
    out = []
    for i, a in enumerate(F.normalize(anchors, dim=1).tolist()):
        e = {
            k: math.exp(sum(x * y for x, y in zip(a, c, strict=True)) / tau) for k, c in enumerate(unit) if k != own[i]
        }
        z = sum(e.values())
        row = math.log(e[partner[i]] / z) + sum(math.log(1 - v / z) for k, v in e.items() if k != partner[i])
        out.append(-row)
    return out


@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 4), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_rows_other_than_the_columns_match_the_loop_reference_and_the_full_rows(half, d, extra, block, seed):
    """A slice of the anchors (one rank's rows) against every item: the same per-row losses and gradients."""
    features = _randn(seed, 2 * half, d)
    columns = torch.cat([features, _randn(seed + 1, extra, d)])  # items only other ranks hold
    lo = int(torch.randint(0, 2 * half, (1,), generator=torch.Generator().manual_seed(seed)))
    own = torch.arange(lo, 2 * half)
    partner = (own + half) % (2 * half)
    anchors = features[lo:].clone().requires_grad_()
    rows = patch_discrimination_rows(anchors, columns, own, partner, temperature=0.5, block_size=block)
    assert rows.shape == (2 * half - lo,) and rows.dtype == torch.float64
    expected = _row_reference(features[lo:], columns, own.tolist(), partner.tolist(), 0.5)
    torch.testing.assert_close(rows, torch.tensor(expected, dtype=torch.float64), rtol=1e-7, atol=1e-12)
    everything = features.clone().requires_grad_()
    index = torch.arange(2 * half)
    full = patch_discrimination_rows(everything, columns, index, (index + half) % (2 * half), temperature=0.5)
    torch.testing.assert_close(rows, full[lo : 2 * half])
    weights = _randn(seed + 2, rows.shape[0]).abs()
    (got,) = torch.autograd.grad((rows * weights).sum(), anchors)
    (want,) = torch.autograd.grad((full[lo : 2 * half] * weights).sum(), everything)
    torch.testing.assert_close(got, want[lo : 2 * half])


def test_gradcheck_of_the_rows_against_other_columns():
    columns = F.normalize(_randn(8, 7, 3), dim=1)
    own, partner = torch.tensor([4, 5, 6]), torch.tensor([0, 6, 1])

    def dense(a: torch.Tensor) -> torch.Tensor:  # the criterion by autograd, columns constant
        x = F.normalize(a, dim=1)
        s = x @ columns.T / 0.5
        s = s.scatter(1, own[:, None], -math.inf)
        p = torch.softmax(s, dim=1)
        keep = torch.ones_like(p, dtype=torch.bool).scatter(1, own[:, None], False).scatter(1, partner[:, None], False)
        return -(p.gather(1, partner[:, None]).squeeze(1).log() + torch.where(keep, torch.log1p(-p), 0).sum(1))

    anchors = _randn(9, 3, 3).requires_grad_()
    assert torch.autograd.gradcheck(dense, (anchors,))
    for block in (None, 1, 2, 7):
        got = patch_discrimination_rows(anchors, columns, own, partner, temperature=0.5, block_size=block)
        torch.testing.assert_close(got, dense(anchors))
        upstream = _randn(10, 3)
        (g_got,) = torch.autograd.grad(got, anchors, upstream)
        (g_want,) = torch.autograd.grad(dense(anchors), anchors, upstream)
        torch.testing.assert_close(g_got, g_want)


def test_patch_discrimination_rows_rejects_bad_indices():
    f = torch.randn(4, 3)
    with pytest.raises(ValueError, match="own"):
        patch_discrimination_rows(f, f, torch.tensor([0, 1]), torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="partner"):
        patch_discrimination_rows(f, f, torch.arange(4), torch.tensor([2, 3, 0, 4]))
    with pytest.raises(ValueError, match="differ from own"):
        patch_discrimination_rows(f, f, torch.arange(4), torch.tensor([2, 3, 2, 1]))
    with pytest.raises(ValueError, match="columns"):
        patch_discrimination_rows(f, torch.randn(4, 2), torch.arange(4), torch.tensor([2, 3, 0, 1]))


@given(sizes, st.integers(1, 16))
def test_the_loss_module_takes_two_views_or_the_stacked_form(case, block):
    """Item i's loss is the mean of its two rows' losses: the mean over items is the code's mean over rows."""
    half, d, seed = case
    view1, view2 = _randn(seed, half, d), _randn(seed + 1, half, d)
    stacked = torch.cat([view1, view2])
    per_row = patch_discrimination_rows(
        stacked, stacked, torch.arange(2 * half), (torch.arange(2 * half) + half) % (2 * half)
    )
    none = PatchDiscriminationLoss(block_size=block, reduction="none")(view1, view2)
    torch.testing.assert_close(none, (per_row[:half] + per_row[half:]) / 2)
    torch.testing.assert_close(PatchDiscriminationLoss(reduction="none")(stacked), none)
    loss = PatchDiscriminationLoss(block_size=block)
    torch.testing.assert_close(loss(view1, view2), patch_discrimination(stacked))
    torch.testing.assert_close(loss(stacked), patch_discrimination(stacked))
    w = _randn(seed + 2, half).abs() + 0.1
    torch.testing.assert_close(loss(view1, view2, weights=w), (w * none).sum() / w.sum())
    torch.testing.assert_close(loss(stacked, weights=w), (w * none).sum() / w.sum())


def test_the_loss_module_rejects_mismatched_views():
    with pytest.raises(ValueError, match="view1 without view2"):
        PatchDiscriminationLoss()(torch.randn(5, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        PatchDiscriminationLoss()(torch.randn(4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="view2"):
        PatchDiscriminationLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="weights"):
        PatchDiscriminationLoss()(torch.randn(8, 3), weights=torch.ones(8))  # stacked: one weight per item


@given(st.tuples(st.integers(2, 8), st.integers(1, 6), st.integers(0, 2**31 - 1)))
def test_gradient_flows_through_the_anchor_rows_only(case):
    """As the code's criterion (N >= 4: at N = 2 the code takes log(1 - 1) - log(1 - 1) = NaN where this is 0)."""
    half, d, seed = case
    features = _randn(seed, 2 * half, d).requires_grad_()
    (ours,) = torch.autograd.grad(patch_discrimination(features, temperature=0.5), features)
    (code,) = torch.autograd.grad(_code_criterion(features, 0.5), features)
    torch.testing.assert_close(ours, code)


def test_the_detached_gradient_differs_from_the_full_one():
    """The anchor-only gradient is a real choice: differentiating the columns too changes it."""
    features = _randn(3, 8, 4).requires_grad_()
    (ours,) = torch.autograd.grad(patch_discrimination(features, temperature=0.5), features)
    (full,) = torch.autograd.grad(_code_criterion(features, 0.5, detach=False), features)
    assert not torch.allclose(ours, full, atol=1e-6)
    torch.testing.assert_close(patch_discrimination(features, temperature=0.5), _code_criterion(features, 0.5))


def test_each_row_is_differentiated_with_respect_to_its_anchor_alone():
    """dL/df_i = (1/N) dl_i/df_i with every other item a constant in l_i: partners get no gradient from row i."""
    features = _randn(5, 6, 3)
    n, tau = features.shape[0], 0.5
    expected = torch.zeros_like(features)
    for i in range(n):
        anchor = features[i].clone().requires_grad_()
        x = F.normalize(features, dim=1)
        a = F.normalize(anchor, dim=0)
        e = torch.exp(x @ a / tau)
        e = torch.cat([e[:i], e[i + 1 :]])  # k != i
        others = [k for k in range(n) if k != i]
        z = e.sum()
        partner = others.index((i + n // 2) % n)
        row = torch.log(e[partner] / z) + sum(torch.log(1 - e[j] / z) for j in range(n - 1) if j != partner)
        (expected[i],) = torch.autograd.grad(-row / n, anchor)
    f = features.clone().requires_grad_()
    (got,) = torch.autograd.grad(patch_discrimination(f, temperature=tau, block_size=2), f)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("block", [None, 1, 3])
def test_gradcheck_against_the_detached_dense_criterion(block):
    """Finite differences of the code's own criterion equal our backward once its columns are held fixed."""
    features = _randn(7, 6, 3).requires_grad_()
    columns = F.normalize(features.detach(), dim=1)

    def anchors_only(f: torch.Tensor) -> torch.Tensor:
        x = F.normalize(f, dim=1)
        n = x.shape[0]
        partner = torch.cat([torch.arange(n // 2, n), torch.arange(n // 2)])
        e = torch.exp(x @ columns.T / 0.5) * (1 - torch.eye(n, dtype=x.dtype))
        z = e.sum(1)
        pos = torch.exp((x * columns[partner]).sum(1) / 0.5) / z
        return -(torch.log(pos).sum() + (torch.log(1 - e / z[:, None]).sum(1) - torch.log(1 - pos)).sum()) / n

    assert torch.autograd.gradcheck(anchors_only, (features,))
    (expected,) = torch.autograd.grad(anchors_only(features), features)
    (got,) = torch.autograd.grad(patch_discrimination(features, temperature=0.5, block_size=block), features)
    torch.testing.assert_close(got, expected)


@given(sizes, st.randoms(use_true_random=False))
def test_permuting_pairs_and_scaling_leave_the_loss_unchanged(case, rnd):
    half, d, seed = case
    features = _randn(seed, 2 * half, d)
    order = list(range(half))
    rnd.shuffle(order)
    perm = torch.tensor(order + [i + half for i in order])
    scale = torch.rand(2 * half, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    base = patch_discrimination(features)
    torch.testing.assert_close(patch_discrimination(features[perm] * scale), base)
    swapped = torch.cat([features[half:], features[:half]])  # the views swap roles: the same pairs
    torch.testing.assert_close(patch_discrimination(swapped), base)


def test_aligned_views_score_lower_than_random_ones():
    anchors = _randn(11, 16, 8)
    aligned = patch_discrimination(torch.cat([anchors, anchors + 0.01 * _randn(12, 16, 8)]))
    random = patch_discrimination(torch.cat([anchors, _randn(13, 16, 8)]))
    assert aligned < random


def test_a_single_pair_has_no_negative_and_zero_loss():
    torch.testing.assert_close(patch_discrimination(torch.randn(2, 3)), torch.tensor(0.0))


def test_half_inputs_are_computed_in_float32_and_stay_finite():
    features = torch.randn(64, 16).half()
    got = patch_discrimination(features)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    torch.testing.assert_close(got, patch_discrimination(features.float()), rtol=1e-3, atol=1e-3)
    duplicate = torch.cat([torch.ones(2, 4), -torch.ones(2, 4)])  # all the mass on one column
    assert torch.isfinite(patch_discrimination(duplicate, temperature=0.01))


def test_patch_discrimination_rejects_bad_input():
    with pytest.raises(ValueError, match="even number of rows"):
        patch_discrimination(torch.randn(5, 3))
    with pytest.raises(ValueError, match="all-zero"):
        patch_discrimination(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="temperature"):
        PatchDiscriminationLoss(temperature=0.0)
    with pytest.raises(ValueError, match="block_size"):
        patch_discrimination(torch.randn(4, 3), block_size=0)
    with pytest.raises(ValueError, match="shape \\(N, D\\)"):
        PatchDiscriminationLoss()(torch.randn(2, 4, 3))


@given(sizes)
def test_mixup_consistency_per_cell_losses_and_mean(case):
    """Cell i's loss is the mean of its row's and its target's row's loss; the mean is the functional's."""
    m, d, seed = case
    mixed, targets = _randn(seed, m, d), _randn(seed + 1, m, d)
    stacked = torch.cat([mixed, targets])
    index = torch.arange(2 * m)
    per_row = patch_discrimination_rows(stacked, stacked, index, (index + m) % (2 * m), temperature=0.2)
    none = MixupConsistencyLoss(temperature=0.2, reduction="none")(mixed, targets)
    torch.testing.assert_close(none, (per_row[:m] + per_row[m:]) / 2)
    torch.testing.assert_close(
        MixupConsistencyLoss(temperature=0.2)(mixed, targets), mixup_consistency(mixed, targets, temperature=0.2)
    )


@given(sizes)
def test_mixup_consistency_is_the_criterion_of_mixed_then_detached_targets(case):
    m, d, seed = case
    mixed = _randn(seed, m, d).requires_grad_()
    targets = _randn(seed + 1, m, d).requires_grad_()
    loss = MixupConsistencyLoss(temperature=0.2)(mixed, targets)
    expected = reference.patch_discrimination(torch.cat([mixed, targets]).detach(), 0.2)
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-7, abs_tol=1e-12)
    loss.backward()
    assert targets.grad is None  # the targets are detached
    assert mixed.grad is not None and torch.isfinite(mixed.grad).all()


def test_mixup_targets_mix_and_normalise_per_cell():
    first, second = _randn(1, 2, 3, 2, 2), _randn(2, 2, 3, 2, 2)
    w = torch.tensor([0.25, 0.8], dtype=torch.float64)
    got = mixup_targets(first, second, w)
    for n in range(2):
        for y in range(2):
            for x in range(2):
                v = w[n] * first[n, :, y, x] + (1 - w[n]) * second[n, :, y, x]
                torch.testing.assert_close(got[n, :, y, x], v / v.norm())
    with pytest.raises(ValueError, match="weights"):
        mixup_targets(first, second, torch.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        mixup_targets(first, second[:, :, :1], w)


@pytest.mark.parametrize("bad", [[-0.1, 0.5], [0.5, 1.5], [float("nan"), 0.5]])
def test_mixup_targets_refuse_weights_outside_the_unit_interval(bad):
    first, second = _randn(1, 2, 3, 2, 2), _randn(2, 2, 3, 2, 2)
    with pytest.raises(ValueError, match="weights"):
        mixup_targets(first, second, torch.tensor(bad, dtype=torch.float64))
    for edge in ([0.0, 1.0], [1.0, 0.0]):  # the ends are fine: one image alone
        assert torch.isfinite(mixup_targets(first, second, torch.tensor(edge, dtype=torch.float64))).all()


def test_patch_grid_and_items_follow_the_codes_layout():
    e = _randn(4, 2, 3, 8, 8)
    grid = patch_grid(e, size=4)
    cell = e[1, :, 2:4, 6:8].mean(dim=(1, 2))
    torch.testing.assert_close(grid[1, :, 1, 3], cell / cell.norm())
    items = grid_items(grid)
    torch.testing.assert_close(items[16 + 1 * 4 + 3], grid[1, :, 1, 3])


def _unit(v: list[float], eps: float = REGION_EPS) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / max(norm, eps) for x in v]


def _region_reference(embeddings: torch.Tensor, assignments: torch.Tensor, tau: float) -> list[float]:
    """Per image: the mean over its regions of the cross-entropy to the batch prototypes, by loops."""
    e, a = embeddings.double().tolist(), assignments.double().tolist()
    n, d, h, w = embeddings.shape
    k_count = assignments.shape[1]
    pixels = [(y, x) for y in range(h) for x in range(w)]
    regions = []
    for i in range(n):
        units = {p: _unit([e[i][c][p[0]][p[1]] for c in range(d)]) for p in pixels}
        pooled = [
            [sum(a[i][k][y][x] * units[(y, x)][c] for y, x in pixels) / len(pixels) for c in range(d)]
            for k in range(k_count)
        ]
        regions.append([_unit(v) for v in pooled])
    prototypes = [_unit([sum(regions[i][k][c] for i in range(n)) / n for c in range(d)]) for k in range(k_count)]
    out = []
    for i in range(n):
        total = 0.0
        for k in range(k_count):
            logits = [
                sum(x * y for x, y in zip(regions[i][k], prototypes[j], strict=True)) / tau for j in range(k_count)
            ]
            total += math.log(sum(math.exp(v) for v in logits)) - logits[k]
        out.append(total / k_count)
    return out


@given(st.integers(1, 3), st.integers(2, 4), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_region_discrimination_matches_the_loop_reference(n, k, d, size, seed):
    e = _randn(seed, n, d, size, size + 1)
    a = _assignments(seed + 1, n, k, size, size + 1)
    expected = _region_reference(e, a, 0.2)
    got = RegionDiscriminationLoss(temperature=0.2)(e, a)
    assert math.isclose(float(got), sum(expected) / n, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(
        float(region_discrimination(e, a, temperature=0.2)), sum(expected) / n, rel_tol=1e-9, abs_tol=1e-12
    )
    none = RegionDiscriminationLoss(temperature=0.2, reduction="none")(e, a)
    torch.testing.assert_close(none, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_region_discrimination_equals_the_codes_eps_when_nothing_is_short():
    """The normalisations' eps changes nothing while every pixel, region and prototype is longer than it."""
    e, a = _randn(4, 3, 4, 3, 3), _assignments(5, 3, 3, 3, 3)
    assert math.isclose(
        float(region_discrimination(e, a)), reference.region_discrimination(e, a, 0.2), rel_tol=1e-12, abs_tol=1e-12
    )


def _zero_pixel_and_empty_clusters() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    e, a = _randn(20, 2, 4, 3, 3), _assignments(21, 2, 3, 3, 3)
    zero_pixel = e.clone()
    zero_pixel[0, :, 1, 1] = 0
    empty_in_one = a.clone()
    empty_in_one[0, 2] = 0
    empty_in_one = empty_in_one / empty_in_one.sum(1, keepdim=True)
    empty_in_all = a.clone()
    empty_in_all[:, 2] = 0
    empty_in_all = empty_in_all / empty_in_all.sum(1, keepdim=True)
    return [
        ("zero pixel", zero_pixel, a),
        ("cluster empty in one image", e, empty_in_one),
        ("cluster empty everywhere", e, empty_in_all),
    ]


@pytest.mark.parametrize("index", range(3))
def test_region_discrimination_gradients_stay_bounded_for_zero_pixels_and_empty_clusters(index):
    """Torch's eps (1e-12) gave gradients of 1e11 (zero pixel, empty cluster) and 1e21 (a cluster empty everywhere)."""
    what, e, a = _zero_pixel_and_empty_clusters()[index]
    e, a = e.clone().requires_grad_(), a.clone().requires_grad_()
    for loss in (region_discrimination(e, a), RegionDiscriminationLoss()(e, a)):
        assert torch.isfinite(loss)
        ge, ga = torch.autograd.grad(loss, (e, a))
        assert torch.isfinite(ge).all() and torch.isfinite(ga).all(), what
        # bounded by ~1/eps (1/eps^2 for a prototype of empty regions) times the incoming gradient
        assert float(ge.abs().max()) < 1e4 and float(ga.abs().max()) < 1e4, what


def test_region_discrimination_refuses_unnormalised_or_swapped_assignments():
    e, a = _randn(1, 2, 4, 3, 3), _assignments(2, 2, 4, 3, 3)
    with pytest.raises(ValueError, match="assignments must sum to 1"):
        RegionDiscriminationLoss()(e, a * 1.01)
    with pytest.raises(ValueError, match="assignments must sum to 1"):
        region_discrimination(e, torch.rand(2, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="assignments must be soft cluster assignments"):
        RegionDiscriminationLoss()(a, e)  # swapped: the embeddings are not probabilities
    with pytest.raises(ValueError, match="assignments"):
        region_features(a, e)
    # within the 1e-3 tolerance: accepted (float32 rounding of a softmax)
    RegionDiscriminationLoss()(e, a * (1 + 5e-4))


@given(st.integers(1, 3), st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_region_discrimination_is_equivariant_to_relabelling_the_clusters(n, k, seed):
    e, a = _randn(seed, n, 4, 3, 3), _assignments(seed + 1, n, k, 3, 3)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(region_discrimination(e, a[:, perm]), region_discrimination(e, a))
    torch.testing.assert_close(region_features(e, a)[:, perm], region_features(e, a[:, perm]))


def test_region_discrimination_gradients_include_the_prototypes():
    e = _randn(1, 2, 3, 3, 3).requires_grad_()
    a = _assignments(2, 2, 3, 3, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: region_discrimination(x, y), (e, a))
    r = region_features(e, a)
    detached = F.cross_entropy(
        (torch.einsum("nkd,jd->nkj", r, F.normalize(r.mean(0), dim=1).detach()) / 0.2).reshape(-1, 3),
        torch.arange(3).repeat(2),
    )
    (with_prototypes,) = torch.autograd.grad(region_discrimination(e, a), e)
    (without,) = torch.autograd.grad(detached, e)
    assert not torch.allclose(with_prototypes, without)


def test_region_discrimination_of_identical_regions_is_log_k():
    e = torch.ones(2, 4, 3, 3, dtype=torch.float64)
    a = torch.full((2, 5, 3, 3), 0.2, dtype=torch.float64)
    torch.testing.assert_close(region_discrimination(e, a), torch.tensor(math.log(5), dtype=torch.float64))


def test_region_discrimination_rejects_bad_input():
    with pytest.raises(ValueError, match="K >= 2"):
        region_discrimination(torch.randn(1, 4, 3, 3), torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match="to match embeddings"):
        region_discrimination(torch.randn(1, 4, 3, 3), torch.ones(1, 2, 3, 2))
    with pytest.raises(ValueError, match="temperature"):
        RegionDiscriminationLoss(temperature=-1)


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_assignment_entropy_matches_the_loop_reference(n, k, size, seed):
    a = torch.rand(n, k, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = assignment_entropy(a)
    assert math.isclose(float(got), reference.binary_entropy_bits(a), rel_tol=1e-9, abs_tol=1e-12)
    assert 0 <= float(got) <= 1


def test_assignment_entropy_extremes_gradient_and_errors():
    one_hot = F.one_hot(torch.tensor([[[0, 1], [2, 0]]]), 3).permute(0, 3, 1, 2).double()
    assert float(assignment_entropy(one_hot)) < 1e-25
    assert float(assignment_entropy(torch.full((1, 2, 1, 1), 0.5))) == pytest.approx(1.0)
    a = (torch.rand(1, 2, 2, 2, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(assignment_entropy, (a,))
    (g,) = torch.autograd.grad(assignment_entropy(one_hot.requires_grad_()), one_hot)
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        assignment_entropy(torch.full((1, 2, 1, 1), 1.5))


@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_soft_dice_matches_the_loop_reference_with_the_empty_mask_rule(n, side, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, 1, side, side, generator=g, dtype=torch.float64)
    target = (torch.rand(n, 1, side, side, generator=g) < 0.4).double()
    target[0] = 0  # one empty target: the loss is on the complements there
    expected = 0.0
    for i in range(n):
        p, y = probs[i].flatten().tolist(), target[i].flatten().tolist()
        if sum(y) == 0:
            p, y = [1 - v for v in p], [1 - v for v in y]
        expected += -2 * sum(a * b for a, b in zip(p, y, strict=True)) / (sum(y) + sum(p) + 1)
    got = soft_dice_loss(probs, target)
    assert math.isclose(float(got), expected / n, rel_tol=1e-12, abs_tol=1e-15)
    assert torch.autograd.gradcheck(lambda x: soft_dice_loss(x, target), (probs.clone().requires_grad_(),))


def test_soft_dice_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape of probs"):
        soft_dice_loss(torch.rand(1, 1, 2, 2), torch.rand(1, 2, 2))
