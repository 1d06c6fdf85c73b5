import open_clip
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import reference
from qualcl.losses import ClipLoss


def _features(seed: int, n: int, d: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


@given(st.integers(1, 32), st.integers(2, 64), st.integers(0, 2**31 - 1), st.floats(1.0, 100.0))
def test_equals_open_clip_exactly(n, d, seed, scale):
    img, txt = (F.normalize(x, dim=1) for x in _features(seed, n, d))
    s = torch.tensor(scale)
    theirs = open_clip.loss.ClipLoss()(img, txt, s)
    assert torch.equal(ClipLoss(normalize=False)(img, txt, s), theirs)
    torch.testing.assert_close(ClipLoss()(img, txt, s), theirs)


@given(st.integers(1, 8), st.integers(2, 6), st.integers(0, 2**31 - 1), st.data())
def test_labels_match_naive_reference(n, d, seed, data):
    img, txt = _features(seed, n, d, torch.float64)
    labels = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    got = ClipLoss(init_logit_scale=5.0)(img, txt, labels=torch.tensor(labels))
    torch.testing.assert_close(got, torch.tensor(reference.clip(img, txt, 5.0, labels), dtype=torch.float64))


def test_distinct_labels_equal_instance_targets():
    img, txt = _features(0, 6, 8)
    loss_fn = ClipLoss()
    torch.testing.assert_close(loss_fn(img, txt, labels=torch.arange(6) * 3), loss_fn(img, txt))


def test_learnable_scale_is_a_parameter_that_gets_gradient():
    img, txt = _features(1, 5, 8)
    loss_fn = ClipLoss(init_logit_scale=10.0, learnable_logit_scale=True)
    assert [n for n, _ in loss_fn.named_parameters()] == ["log_logit_scale"]
    loss_fn(img, txt).backward()
    assert loss_fn.log_logit_scale.grad is not None
    fixed = ClipLoss(init_logit_scale=10.0)
    assert list(fixed.parameters()) == []
    torch.testing.assert_close(fixed(img, txt), ClipLoss()(img, txt, 10.0))


def test_scale_is_clamped():
    loss_fn = ClipLoss(init_logit_scale=1000.0, learnable_logit_scale=True, max_logit_scale=100.0)
    assert loss_fn.current_logit_scale().item() == pytest.approx(100.0)


def test_output_dict_and_gradcheck():
    img, txt = _features(2, 4, 3, torch.float64)
    out = ClipLoss()(img, txt, output_dict=True)
    torch.testing.assert_close(out["loss"], (out["image_to_text"] + out["text_to_image"]) / 2)
    img.requires_grad_()
    txt.requires_grad_()
    labels = torch.tensor([0, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda a, b: ClipLoss(init_logit_scale=3.0)(a, b, labels=labels), (img, txt))


def test_half_inputs_give_float32():
    img, txt = _features(3, 8, 16)
    assert ClipLoss()(img.half(), txt.half()).dtype == torch.float32


def test_bad_inputs_name_the_argument():
    img, txt = _features(0, 4, 8)
    with pytest.raises(ValueError, match="text_features"):
        ClipLoss()(img, txt[:3])
    with pytest.raises(ValueError, match="text_features"):
        ClipLoss()(img, txt[:, :4])
    with pytest.raises(ValueError, match="labels"):
        ClipLoss()(img, txt, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="logit_scale"):
        ClipLoss()(img, txt, -1.0)
    with pytest.raises(ValueError, match="init_logit_scale"):
        ClipLoss(init_logit_scale=0.0)
    with pytest.raises(ValueError, match="image_features.*non-finite"):
        ClipLoss()(img.clone().fill_(float("nan")), txt)
    with pytest.raises(ValueError, match="image_features"):
        ClipLoss()(img[:0], txt[:0])


@given(st.integers(1, 16), st.integers(2, 32), st.integers(0, 2**31 - 1), st.floats(-5.0, 5.0))
def test_logit_bias_equals_open_clip_exactly_and_cancels(n, d, seed, bias):
    img, txt = (F.normalize(x, dim=1) for x in _features(seed, n, d))
    s, b = torch.tensor(10.0), torch.tensor(bias)
    theirs = open_clip.loss.ClipLoss()(img, txt, s, b)
    assert torch.equal(ClipLoss(normalize=False)(img, txt, s, b), theirs)
    # under the softmax a constant bias cancels: the fused path, which leaves it out, agrees
    torch.testing.assert_close(ClipLoss(normalize=False, impl="torch")(img, txt, s, b), theirs)
    torch.testing.assert_close(ClipLoss(normalize=False)(img, txt, s), theirs)


@pytest.mark.parametrize("impl", ["naive", "torch"])
def test_one_grade_batch_has_nothing_to_contrast(impl):
    img, txt = (x.double().requires_grad_() for x in _features(0, 5, 8))
    loss = ClipLoss(impl=impl)(img, txt, labels=torch.zeros(5, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(img.grad, torch.zeros_like(img))
    # a grade seen once among others still counts (it has negatives)
    mixed = ClipLoss(impl=impl)(img.detach(), txt.detach(), labels=torch.tensor([0, 0, 0, 0, 1]))
    assert mixed.item() > 0
