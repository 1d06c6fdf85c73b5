"""UnfoldConv2d computes the same convolution (values and gradients) as nn.Conv2d, on any small map."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qualcl.models import UnfoldConv2d, build_encoder, unfold_small_convs


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),  # batch
    st.integers(1, 5),  # in channels
    st.integers(1, 4),  # out channels
    st.integers(1, 4),  # height
    st.integers(1, 4),  # width
    st.sampled_from([1, 3]),  # kernel
    st.integers(1, 2),  # stride
    st.integers(0, 1),  # padding
    st.booleans(),  # bias
    st.integers(0, 2**31 - 1),
)
def test_unfold_conv_equals_conv2d_in_float64(n, cin, cout, h, w, k, stride, padding, bias, seed):
    if h + 2 * padding < k or w + 2 * padding < k:
        return
    torch.manual_seed(seed)
    reference = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias).double()
    ours = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias).double()
    ours.load_state_dict(reference.state_dict())
    assert unfold_small_convs(ours, max_pixels=16) == 1 and isinstance(ours, UnfoldConv2d)
    x = torch.randn(n, cin, h, w, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    want, got = reference(x), ours(x2)
    torch.testing.assert_close(got, want)
    weight = torch.randn_like(want)
    (want * weight).sum().backward()
    (got * weight).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_gradcheck_through_the_unfold_path():
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    unfold_small_convs(conv)
    x = torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: conv(t), (x,))


def test_large_maps_and_other_devices_use_the_native_path(monkeypatch):
    conv = nn.Conv2d(2, 3, 3, padding=1)
    unfold_small_convs(conv, max_pixels=4)
    called = []
    monkeypatch.setattr(torch.nn.functional, "unfold", lambda *a, **k: called.append(1) or pytest.fail("unfolded"))
    conv(torch.randn(1, 2, 3, 3))  # 9 pixels > 4: native
    assert not called
    with pytest.raises(ValueError, match="max_pixels"):
        unfold_small_convs(conv, max_pixels=0)


def test_an_encoder_keeps_its_state_dict_and_outputs():
    torch.manual_seed(0)
    plain = build_encoder("resnet10").eval()
    fast = build_encoder("resnet10").eval()
    fast.load_state_dict(plain.state_dict())
    assert unfold_small_convs(fast) == sum(isinstance(m, nn.Conv2d) for m in plain.modules())
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-4, rtol=1e-4)
