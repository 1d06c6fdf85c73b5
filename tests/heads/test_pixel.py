"""Pixel embedding and clustering heads; the U-Net decoder in local discrimination's layout."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from qualcl.heads import ClusteringHead, PixelEmbeddingHead, UNetDecoder
from qualcl.models import build_encoder

shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(2, 5), st.integers(1, 5), st.integers(0, 10**6))


@given(shapes, st.integers(1, 9))
def test_assignments_are_positive_and_sum_to_one_per_pixel(shape, k):
    n, c, h, w, seed = shape
    torch.manual_seed(seed)
    head = ClusteringHead(c, num_clusters=k).double()
    a = head(10 * torch.randn(n, c, h, w, dtype=torch.float64))
    assert a.shape == (n, k, h, w)
    assert bool((a > 0).all())
    torch.testing.assert_close(a.sum(dim=1), torch.ones(n, h, w, dtype=torch.float64))


def test_assignments_follow_sigmoid_then_l1_as_the_code():
    torch.manual_seed(0)
    head = ClusteringHead(3, num_clusters=4).double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    conv1, bn, _, conv2 = head.net
    h = F.relu(F.batch_norm(F.conv2d(x, conv1.weight, conv1.bias, padding=1), bn.running_mean, bn.running_var))
    s = torch.sigmoid(F.conv2d(h, conv2.weight, conv2.bias, padding=1)) + 1e-9
    torch.testing.assert_close(head(x), s / s.sum(dim=1, keepdim=True))


def test_underflowing_sigmoids_give_uniform_assignments_not_nan():
    head = ClusteringHead(2, num_clusters=4).eval()
    with torch.no_grad():
        head.net[3].bias.fill_(-1e4)
    a = head(torch.randn(1, 2, 3, 3))
    torch.testing.assert_close(a, torch.full_like(a, 0.25))


@given(shapes, st.integers(1, 8))
def test_pixel_embeddings_have_unit_norm(shape, dim):
    n, c, h, w, seed = shape
    torch.manual_seed(seed)
    e = PixelEmbeddingHead(c, dim=dim).double()(torch.randn(n, c, h, w, dtype=torch.float64))
    assert e.shape == (n, dim, h, w)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(n, h, w, dtype=torch.float64))


def test_heads_reject_bad_input():
    with pytest.raises(ValueError, match="4 channels"):
        PixelEmbeddingHead(4)(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        ClusteringHead(4)(torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match="more than one"):
        ClusteringHead(4)(torch.randn(1, 4, 1, 1))
    assert ClusteringHead(4).eval()(torch.randn(1, 4, 1, 1)).shape == (1, 16, 1, 1)
    with pytest.raises(ValueError, match="num_clusters"):
        ClusteringHead(4, num_clusters=0)


def _reference_decoder(decoder: UNetDecoder, pyramid: list[torch.Tensor]) -> torch.Tensor:
    """The local-discrimination decoder written out: up ×2 (nearest), concat, conv-BN-ReLU twice; last: concat only."""

    def block(seq, x):
        for conv, bn in ((seq[0], seq[1]), (seq[3], seq[4])):
            x = F.relu(F.batch_norm(F.conv2d(x, conv.weight, conv.bias, padding=1), bn.running_mean, bn.running_var))
        return x

    x = pyramid[4]
    for seq, skip in zip(decoder.blocks, (pyramid[3], pyramid[2], pyramid[1]), strict=True):
        x = block(seq, torch.cat([skip, F.interpolate(x, scale_factor=2.0, mode="nearest")], dim=1))
    return torch.cat([pyramid[0], F.interpolate(x, scale_factor=2.0, mode="nearest")], dim=1)


def test_unet_decoder_in_the_local_discrimination_layout():
    encoder = build_encoder("vgg16_bn_tiny").double().eval()
    decoder = (
        UNetDecoder(encoder.pyramid_channels, decoder_channels=(16, 32, 64), middle="half", last="concat")
        .double()
        .eval()
    )
    widths = [(b[0].in_channels, b[0].out_channels, b[3].out_channels) for b in decoder.blocks]
    assert widths == [(256, 128, 64), (128, 64, 32), (64, 32, 16)]  # the code's conv_layer8x / 4x / 2x
    assert decoder.channels == 32
    pyramid = encoder.forward_pyramid(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    out = decoder(pyramid)
    assert out.shape == (2, 32, 32, 32)
    torch.testing.assert_close(out, _reference_decoder(decoder, pyramid))
    with pytest.raises(ValueError, match="3 entries"):
        UNetDecoder(encoder.pyramid_channels, decoder_channels=(16, 16, 32, 64), last="concat")
    with pytest.raises(ValueError, match="last"):
        UNetDecoder(encoder.pyramid_channels, last="sum")
