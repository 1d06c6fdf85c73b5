"""MirrorAttention, GeM and the U-Net decoder: identity at init, loop references, the public code, mirrors."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qualcl.heads import GeM, MirrorAttention, UNetDecoder
from qualcl.models import build_encoder


def _randomise(block: MirrorAttention, seed: int = 0) -> MirrorAttention:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return block.double().eval()


def _embed(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    return seq(x)


def _loop(block: MirrorAttention, x, x_h, x_v):
    """Explicit loops over positions: both variants, in float64."""
    n, _, h, w = x.shape
    mid, length = block.mid, h * w
    outs = []
    pairs = (
        [(block.f_v, x_h, block.g_ah, block.f_ah), (block.f_v, x, block.g_av, block.f_av)]
        if block.variant == "official"
        else [(block.f_h, x_h, block.g_ah, block.f_ah), (block.f_v, x_v, block.g_av, block.f_av)]
    )
    q_all = _embed(block.f_a, x).reshape(n, mid, length)
    for embed, mirror, value, out_conv in pairs:
        k_all = _embed(embed, mirror).reshape(n, mid, length)
        g_all = value(x).reshape(n, mid, length)
        mixed = torch.zeros(n, mid, length, dtype=x.dtype)
        for b in range(n):
            for j in range(length):
                if block.variant == "intended":
                    scores = [float(q_all[b, :, j] @ k_all[b, :, i]) / math.sqrt(mid) for i in range(length)]
                    top = max(scores)
                    weights = [math.exp(s - top) for s in scores]
                    total = sum(weights)
                    for i in range(length):
                        mixed[b, :, j] += weights[i] / total * g_all[b, :, i]
                else:  # the code: softmax over the image positions j for each mirror position i
                    for i in range(length):
                        scores = [float(k_all[b, :, i] @ q_all[b, :, jj]) / math.sqrt(mid) for jj in range(length)]
                        top = max(scores)
                        denominator = sum(math.exp(s - top) for s in scores)
                        mixed[b, :, j] += math.exp(scores[j] - top) / denominator * g_all[b, :, i]
        outs.append(out_conv(mixed.reshape(n, mid, h, w)) + x)
    return outs


class _PublicMirrorAttention(nn.Module):
    """FundusDR's MirrorAttention.forward transcribed (weights shared with a qualcl block)."""

    def __init__(self, ours: MirrorAttention) -> None:
        super().__init__()
        self.o, self.mid_ch = ours, ours.mid

    def forward(self, x_a, x_h, x_v):
        o = self.o
        b, _, h, w = x_a.shape
        f_a = o.f_a(x_a).view(b, self.mid_ch, h * w)
        f_v = o.f_v(x_v).view(b, self.mid_ch, h * w)
        f_h = o.f_v(x_h).view(b, self.mid_ch, h * w)
        f_av = torch.softmax((self.mid_ch**-0.50) * torch.bmm(f_v.permute(0, 2, 1), f_a), dim=-1)
        f_ah = torch.softmax((self.mid_ch**-0.50) * torch.bmm(f_h.permute(0, 2, 1), f_a), dim=-1)
        g_av = o.g_av(x_a).view(b, self.mid_ch, h * w)
        g_ah = o.g_ah(x_a).view(b, self.mid_ch, h * w)
        y_av = o.f_av(torch.bmm(g_av, f_av).view(b, self.mid_ch, h, w)) + x_a
        y_ah = o.f_ah(torch.bmm(g_ah, f_ah).view(b, self.mid_ch, h, w)) + x_a
        return y_ah, y_av


@pytest.mark.parametrize("variant", ["intended", "official"])
def test_identity_at_initialisation(variant):
    x = torch.rand(2, 8, 3, 5)
    out = MirrorAttention(8, reduction=2, variant=variant)(x, x.flip(3), x.flip(2))
    assert torch.equal(out.horizontal, x) and torch.equal(out.vertical, x)


@pytest.mark.parametrize("variant", ["intended", "official"])
def test_matches_the_loop_reference(variant):
    block = _randomise(MirrorAttention(6, reduction=2, variant=variant))
    g = torch.Generator().manual_seed(1)
    x, x_h, x_v = (torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    out = block(x, x_h, x_v, return_attention=True)
    fast = block(x, x_h, x_v)  # the fused (scaled_dot_product_attention) path
    want_h, want_v = _loop(block, x, x_h, x_v)
    torch.testing.assert_close(out.horizontal, want_h)
    torch.testing.assert_close(out.vertical, want_v)
    torch.testing.assert_close(fast.horizontal, want_h)
    torch.testing.assert_close(fast.vertical, want_v)
    torch.testing.assert_close(out.attention_h.sum(-1), torch.ones(2, 12, dtype=torch.float64))


def test_official_is_the_public_code_called_as_its_network_does():
    block = _randomise(MirrorAttention(8, reduction=2, variant="official"), seed=3)
    g = torch.Generator().manual_seed(2)
    x, x_h, x_v = (torch.randn(3, 8, 4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    ours = block(x, x_h, x_v)  # x_v is ignored, as the network passes the image itself
    theirs = _PublicMirrorAttention(block)(x, x_h, x)  # self.ma(xa5, xh5, xa5)
    torch.testing.assert_close(ours.horizontal, theirs[0])
    torch.testing.assert_close(ours.vertical, theirs[1])


def test_default_mirrors_are_flips_of_the_map_and_the_block_is_flip_equivariant():
    block = _randomise(MirrorAttention(6, reduction=3), seed=4)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    default = block(x)
    explicit = block(x, x.flip(3), x.flip(2))
    torch.testing.assert_close(default.horizontal, explicit.horizontal)
    # roles swapped: the image's mirror attending to the image gives the mirrored output
    swapped = block(x.flip(3), x, x.flip(3).flip(2))
    torch.testing.assert_close(swapped.horizontal, default.horizontal.flip(3))
    # the mirror matters: attending to the mirror differs from attending to the image itself
    itself = block(x, x, x)
    assert not torch.allclose(itself.horizontal, default.horizontal)


def test_on_a_symmetric_map_the_horizontal_branch_is_self_attention():
    block = _randomise(MirrorAttention(4, reduction=2), seed=5)
    half = torch.randn(1, 4, 3, 2, dtype=torch.float64)
    symmetric = torch.cat([half, half.flip(3)], dim=3)
    out = block(symmetric, return_attention=True)
    to_itself = block(symmetric, symmetric, symmetric, return_attention=True)
    torch.testing.assert_close(out.horizontal, to_itself.horizontal)
    torch.testing.assert_close(out.attention_h, to_itself.attention_h)


@pytest.mark.parametrize("variant", ["intended", "official"])
def test_gradcheck(variant):
    block = _randomise(MirrorAttention(4, reduction=2, variant=variant), seed=6)
    x = torch.randn(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    x_h = torch.randn(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: torch.cat([t.flatten() for t in block(a, b)[:2]]), (x, x_h))


def test_mirror_attention_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        MirrorAttention(10, reduction=3)
    with pytest.raises(ValueError, match="variant"):
        MirrorAttention(8, variant="literal")
    block = MirrorAttention(8)
    with pytest.raises(ValueError, match="channels"):
        block(torch.randn(1, 6, 3, 3))
    with pytest.raises(ValueError, match="x_h must have the shape"):
        block(torch.randn(1, 8, 3, 3), torch.randn(1, 8, 3, 4))


@settings(max_examples=20, deadline=None)
@given(st.floats(0.5, 6.0), st.integers(0, 2**31 - 1))
def test_gem_matches_the_loop(p, seed):
    x = torch.rand(2, 3, 2, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gem = GeM(p=p).double()
    got = gem(x)
    p = float(gem.p)  # the parameter holds p in float32
    for n in range(2):
        for c in range(3):
            values = [max(float(v), 1e-6) ** p for v in x[n, c].flatten()]
            assert float(got[n, c]) == pytest.approx((sum(values) / len(values)) ** (1 / p), rel=1e-12)


def test_gem_limits_gradient_and_parameters():
    x = torch.rand(2, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(GeM(p=1.0, learnable=False).double()(x), x.mean(dim=(2, 3)))
    torch.testing.assert_close(GeM(p=200.0).double()(x), x.amax(dim=(2, 3)), rtol=0.02, atol=0.0)
    gem = GeM(p=3.0).double()
    assert isinstance(gem.p, nn.Parameter) and not isinstance(GeM(learnable=False).p, nn.Parameter)
    x.requires_grad_(True)
    gem(x).sum().backward()
    assert gem.p.grad is not None and x.grad is not None and torch.isfinite(gem.p.grad).all()
    with pytest.raises(ValueError, match="p"):
        GeM(p=0.0)
    with pytest.raises(ValueError, match="x must have shape"):
        GeM()(torch.rand(3, 4))


def test_gem_gradcheck_including_the_exponent():
    gem = GeM(p=2.5).double()
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64) + 0.1

    def f(t, p):
        gem.p.data = p.detach()
        return F.avg_pool2d(t.clamp(min=gem.eps).pow(p), t.shape[-2:]).pow(1.0 / p).flatten()

    p = torch.tensor([2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), p))
    # and the module's own gradient with respect to p equals that formula's
    gem = GeM(p=2.5).double()
    gem(x).sum().backward()
    p_ref = torch.tensor([2.5], dtype=torch.float64, requires_grad=True)
    f(x.detach(), p_ref).sum().backward()
    torch.testing.assert_close(gem.p.grad, p_ref.grad)


class _PublicUp(nn.Module):
    """FundusDR's Up (bilinear) and DoubleConv, transcribed."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        mid = in_channels // 2
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x1, x2):
        x1 = self.up(x1)
        dy, dx = x2.size()[2] - x1.size()[2], x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


def test_unet_decoder_is_the_public_decoder_with_the_same_weights():
    channels = (4, 8, 16, 32, 32)  # the public trunk at 1/16 width
    ours = UNetDecoder(channels, out_channels=3, upsample="bilinear", final_activation="sigmoid").double().eval()
    ups = [_PublicUp(64, 16), _PublicUp(32, 8), _PublicUp(16, 4), _PublicUp(8, 4)]
    outc = nn.Conv2d(4, 3, 1)
    for up, block in zip(ups, ours.blocks, strict=True):
        up.conv.load_state_dict(block.state_dict())
    outc.load_state_dict(ours.head.state_dict())
    g = torch.Generator().manual_seed(0)
    sizes = [(17, 18), (8, 9), (4, 4), (2, 2), (1, 1)]  # odd sizes exercise the padding
    pyramid = [torch.randn(2, c, *s, generator=g, dtype=torch.float64) for c, s in zip(channels, sizes, strict=True)]
    x = pyramid[-1]
    for up, skip in zip([u.double().eval() for u in ups], reversed(pyramid[:-1]), strict=True):
        x = up(x, skip)
    want = torch.sigmoid(outc.double()(x))
    torch.testing.assert_close(ours(pyramid), want)


@pytest.mark.parametrize("name", ["resnet10", "vgg16_bn_tiny"])
def test_unet_decoder_on_encoder_pyramids(name):
    encoder = build_encoder(name)
    pyramid = encoder.forward_pyramid(torch.randn(2, 3, 64, 64))
    decoder = UNetDecoder(encoder.pyramid_channels, out_channels=2)
    out = decoder(pyramid)
    assert out.shape == (2, 2, *pyramid[0].shape[-2:])
    out.sum().backward()
    assert all(p.grad is not None for p in decoder.parameters())
    partial = UNetDecoder(encoder.pyramid_channels[2:])
    assert partial(pyramid[2:]).shape[-2:] == pyramid[2].shape[-2:]


def test_unet_decoder_bad_input():
    with pytest.raises(ValueError, match="at least two"):
        UNetDecoder([8])
    with pytest.raises(ValueError, match="decoder_channels needs 2"):
        UNetDecoder([4, 8, 16], decoder_channels=[4])
    with pytest.raises(ValueError, match="upsample"):
        UNetDecoder([4, 8], upsample="bicubic")
    decoder = UNetDecoder([4, 8])
    with pytest.raises(ValueError, match="expected 2 pyramid maps"):
        decoder([torch.randn(1, 4, 4, 4)])
    with pytest.raises(ValueError, match="channels"):
        decoder([torch.randn(1, 4, 4, 4), torch.randn(1, 6, 2, 2)])
