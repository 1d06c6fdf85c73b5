"""Batched, seeded colour augmentation equals torchvision's functional ops image by image."""

import pytest
import torch
import torchvision.transforms.v2.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.data.augment import ColorJitterSpec, apply_color_jitter, hsv_to_rgb, rgb_to_grey, rgb_to_hsv


def _torchvision(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    b, c, s, h = params[:4].tolist()
    ops = [
        lambda im: F.adjust_brightness(im, b),
        lambda im: F.adjust_contrast(im, c),
        lambda im: F.adjust_saturation(im, s),
        lambda im: F.adjust_hue(im, h),
    ]
    for op in params[4:8].long().tolist():
        image = ops[op](image)
    return F.rgb_to_grayscale(image, num_output_channels=3) if params[8] > 0.5 else image


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 10_000), st.integers(1, 6), st.sampled_from([(0.4, 0.4, 0.4, 0.1, 0.2), (0.2, 0.2, 0.2, 0.02, 0.0)])
)
def test_batched_jitter_equals_torchvision_per_image(seed, n, strengths):
    g = torch.Generator().manual_seed(seed)
    spec = ColorJitterSpec(*strengths)
    images = torch.rand(n, 3, 5, 7, generator=g)
    params = torch.stack([spec.sample(g) for _ in range(n)])
    want = torch.stack([_torchvision(images[i], params[i]) for i in range(n)])
    torch.testing.assert_close(apply_color_jitter(images, params), want, atol=2e-5, rtol=0)


def test_draws_follow_the_strengths_and_the_generator():
    spec = ColorJitterSpec(0.4, 0.4, 0.4, 0.1, grayscale=0.5)
    draws = torch.stack([spec.sample(torch.Generator().manual_seed(i)) for i in range(400)])
    assert bool((draws[:, :3] >= 0.6).all() and (draws[:, :3] <= 1.4).all())
    assert bool((draws[:, 3].abs() <= 0.1).all())
    assert all(sorted(row) == [0, 1, 2, 3] for row in draws[:, 4:8].long().tolist())
    assert 0.35 < float(draws[:, 8].mean()) < 0.65
    again = spec.sample(torch.Generator().manual_seed(7))
    assert torch.equal(again, spec.sample(torch.Generator().manual_seed(7)))
    assert torch.equal(
        apply_color_jitter(torch.ones(1, 3, 2, 2) / 2, ColorJitterSpec().sample(torch.Generator())[None]),
        torch.ones(1, 3, 2, 2) / 2,
    )  # fmt: skip  (all-neutral parameters: unchanged)


def test_hsv_round_trip_and_grey():
    x = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(rgb_to_grey(x), F.rgb_to_grayscale(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="hue"):
        ColorJitterSpec(hue=0.6)
    with pytest.raises(ValueError, match="brightness"):
        ColorJitterSpec(brightness=-1)
    with pytest.raises(ValueError, match=r"params must be \(2, 9\)"):
        apply_color_jitter(torch.rand(2, 3, 4, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="float"):
        apply_color_jitter(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, 9))
