"""Patches, random masking, sin-cos positions and the patch loss against MAE's code and float64 loops."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.functional import (
    kept_tokens,
    masked_reconstruction_loss,
    patchify,
    random_masking,
    sincos_2d_position_embedding,
    unpatchify,
)


def _rand(seed, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------- MAE's own code
def mae_patchify(imgs, p):
    """``MaskedAutoencoderViT.patchify`` of facebookresearch/mae (square images), verbatim."""
    assert imgs.shape[2] == imgs.shape[3] and imgs.shape[2] % p == 0
    h = w = imgs.shape[2] // p
    c = imgs.shape[1]
    x = imgs.reshape(shape=(imgs.shape[0], c, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(shape=(imgs.shape[0], h * w, p**2 * c))


def mae_unpatchify(x, p, c):
    h = w = int(x.shape[1] ** 0.5)
    x = x.reshape(shape=(x.shape[0], h, w, p, p, c))
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(shape=(x.shape[0], c, h * p, h * p))


def mae_1d(embed_dim, pos):
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def mae_2d(embed_dim, grid_size, cls_token=False):
    """``get_2d_sincos_pos_embed`` of facebookresearch/mae (``util/pos_embed.py``)."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([mae_1d(embed_dim // 2, grid[0]), mae_1d(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


# ------------------------------------------------------------------------------------- patchify
@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(0, 999)
)
def test_patchify_matches_a_loop_and_round_trips(n, c, rows, cols, p, seed):
    x = _rand(seed, n, c, rows * p, cols * p)
    patches = patchify(x, p)
    assert patches.shape == (n, rows * cols, p * p * c)
    for b in range(n):
        for i in range(rows):
            for j in range(cols):
                block = x[b, :, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (c, p, p)
                assert torch.equal(patches[b, i * cols + j], block.permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(patches, p, grid=(rows, cols)), x)


@pytest.mark.parametrize(("c", "side", "p"), [(3, 32, 16), (1, 12, 4), (3, 224, 16)])
def test_patchify_and_unpatchify_equal_maes(c, side, p):
    x = _rand(c + side, 2, c, side, side, dtype=torch.float32)
    patches = patchify(x, p)
    assert torch.equal(patches, mae_patchify(x, p))
    assert torch.equal(unpatchify(patches, p), mae_unpatchify(patches, p, c))


def test_patch_errors_are_named():
    with pytest.raises(ValueError, match="image size 30x32 is not divisible by the patch size 16"):
        patchify(torch.zeros(1, 3, 30, 32), 16)
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, W\)"):
        patchify(torch.zeros(3, 32, 32), 16)
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        patchify(torch.zeros(1, 3, 32, 32, dtype=torch.long), 16)
    with pytest.raises(ValueError, match="do not form a square grid"):
        unpatchify(torch.zeros(1, 8, 12), 2)
    with pytest.raises(ValueError, match="grid 2x2 holds 4 patches, but patches has L = 8"):
        unpatchify(torch.zeros(1, 8, 12), 2, grid=(2, 2))
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        unpatchify(torch.zeros(1, 4, 10), 2)


# -------------------------------------------------------------------------------- random masking
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 50), st.floats(0.0, 0.95), st.integers(0, 2**31 - 1))
def test_random_masking_keeps_round_l_1_minus_r_and_restores_the_order(n, length, ratio, seed):
    keep = round(length * (1 - ratio))
    tokens = _rand(seed, n, length, 3)
    if keep < 1:
        with pytest.raises(ValueError, match="leaves no visible token"):
            random_masking(tokens, ratio)
        return
    out = random_masking(tokens, ratio, generator=torch.Generator().manual_seed(seed))
    assert out.visible.shape == (n, keep, 3)
    assert out.ids_keep.shape == (n, keep) and out.ids_restore.shape == (n, length)
    assert out.mask.shape == (n, length) and out.mask.dtype == tokens.dtype
    assert torch.equal(out.mask.sum(dim=1), torch.full((n,), float(length - keep), dtype=tokens.dtype))
    for b in range(n):
        kept = out.ids_keep[b].tolist()
        assert len(set(kept)) == keep
        assert sorted(out.ids_restore[b].tolist()) == list(range(length))  # a permutation
        for slot, index in enumerate(kept):
            assert torch.equal(out.visible[b, slot], tokens[b, index])
            assert out.mask[b, index] == 0
            assert out.ids_restore[b, index] == slot  # ids_restore inverts the shuffle
        assert set(torch.nonzero(out.mask[b] == 0).flatten().tolist()) == set(kept)
    # MAE's decoder input: visible tokens then fillers, gathered with ids_restore → original order
    fillers = torch.full((n, length - keep, 3), float("nan"), dtype=tokens.dtype)
    restored = torch.gather(torch.cat([out.visible, fillers], 1), 1, out.ids_restore[..., None].expand(-1, -1, 3))
    visible = out.mask == 0
    assert torch.equal(restored[visible], tokens[visible])
    assert torch.isnan(restored[~visible]).all()


def test_random_masking_is_uniform_and_seeded():
    tokens = torch.zeros(4000, 10, 1)
    out = random_masking(tokens, 0.7, generator=torch.Generator().manual_seed(1))
    kept = (out.mask == 0).double().mean(dim=0)  # each position kept with probability 3/10
    sigma = math.sqrt(0.3 * 0.7 / 4000)
    assert torch.all((kept - 0.3).abs() < 6 * sigma), kept
    again = random_masking(tokens, 0.7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.ids_keep, again.ids_keep)
    other = random_masking(tokens, 0.7, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(out.ids_keep, other.ids_keep)


def test_random_masking_errors_are_named():
    with pytest.raises(ValueError, match=r"mask_ratio must lie in \[0, 1\), got 1.0"):
        random_masking(torch.zeros(1, 4, 2), 1.0)
    with pytest.raises(ValueError, match="mask_ratio must be"):
        random_masking(torch.zeros(1, 4, 2), -0.1)
    with pytest.raises(ValueError, match="mask_ratio 0.9 leaves no visible token of L = 4"):
        random_masking(torch.zeros(1, 4, 2), 0.9)
    with pytest.raises(ValueError, match=r"tokens must have shape \(N, L, D\)"):
        random_masking(torch.zeros(4, 2), 0.5)
    assert kept_tokens(196, 0.75) == 49


# ---------------------------------------------------------------------------- sin-cos positions
@pytest.mark.parametrize(("dim", "side", "cls"), [(8, 3, False), (512, 14, True), (32, 1, True), (64, 7, False)])
def test_sincos_equals_maes(dim, side, cls):
    ours = sincos_2d_position_embedding(dim, side, class_token=cls)
    theirs = torch.from_numpy(mae_2d(dim, side, cls_token=cls)).float()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_sincos_rectangular_grids_are_row_major():
    grid = sincos_2d_position_embedding(16, (2, 5))
    square = sincos_2d_position_embedding(16, 5)
    assert grid.shape == (10, 16)
    torch.testing.assert_close(grid, square[:10])  # the first two rows of a 5x5 grid
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d_position_embedding(10, 3)


# -------------------------------------------------------------------------- reconstruction loss
def loop_loss(pred, target, mask, norm_pix, loss_on):
    n, length, p = pred.shape
    total, weight = 0.0, 0.0
    for b in range(n):
        for i in range(length):
            t = target[b, i].tolist()
            if norm_pix:
                mean = sum(t) / p
                var = sum((v - mean) ** 2 for v in t) / (p - 1)
                t = [(v - mean) / math.sqrt(var + 1e-6) for v in t]
            err = sum((a - c) ** 2 for a, c in zip(pred[b, i].tolist(), t, strict=True)) / p
            w = 1.0 if loss_on == "all" else float(mask[b, i])
            total += w * err
            weight += w
    return total / weight


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(2, 6),
    st.booleans(),
    st.sampled_from(["masked", "all"]),
    st.integers(0, 2**31 - 1),
)
def test_reconstruction_loss_matches_the_loop(n, length, p, norm_pix, loss_on, seed):
    pred, target = _rand(seed, n, length, p), _rand(seed + 1, n, length, p) * 3 + 1
    mask = (torch.rand(n, length, generator=torch.Generator().manual_seed(seed)) < 0.6).double()
    mask[0, 0] = 1.0  # at least one removed patch
    got = masked_reconstruction_loss(pred, target, mask, norm_pix_loss=norm_pix, loss_on=loss_on)
    assert got.item() == pytest.approx(loop_loss(pred, target, mask, norm_pix, loss_on), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("loss_on", ["masked", "all"])
def test_reconstruction_loss_gradients(norm_pix, loss_on):
    pred = _rand(0, 2, 3, 4).requires_grad_()
    target = _rand(1, 2, 3, 4).requires_grad_()
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    fn = lambda a, b: masked_reconstruction_loss(a, b, mask, norm_pix_loss=norm_pix, loss_on=loss_on)
    assert torch.autograd.gradcheck(fn, (pred, target))
    fn(pred, target).backward()
    if loss_on == "masked":  # the kept patches get no gradient
        assert torch.all(pred.grad[mask == 0] == 0) and torch.any(pred.grad[mask == 1] != 0)
    else:
        assert torch.all(pred.grad.abs().sum(-1) > 0)


def test_reconstruction_loss_errors_are_named():
    x = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match="mask removes no patch"):
        masked_reconstruction_loss(x, x, torch.zeros(1, 4))
    assert masked_reconstruction_loss(x, x + 1, torch.zeros(1, 4), loss_on="all").item() == 1.0
    with pytest.raises(ValueError, match="target must have pred's shape"):
        masked_reconstruction_loss(x, torch.zeros(1, 4, 2), torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"mask must have shape \(N, L\) = \(1, 4\)"):
        masked_reconstruction_loss(x, x, torch.ones(4))
    with pytest.raises(ValueError, match="loss_on must be one of"):
        masked_reconstruction_loss(x, x, torch.ones(1, 4), loss_on="visible")
    with pytest.raises(ValueError, match="norm_pix_loss needs patches of at least 2"):
        masked_reconstruction_loss(torch.zeros(1, 4, 1), torch.zeros(1, 4, 1), torch.ones(1, 4), norm_pix_loss=True)
    with pytest.raises(ValueError, match="pred contains 1 non-finite"):
        masked_reconstruction_loss(torch.tensor([[[float("nan"), 0.0]]]), torch.zeros(1, 1, 2), torch.ones(1, 1))
