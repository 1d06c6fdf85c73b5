import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qualcl.data.levels import LEVEL_NAMES, split_levels
from qualcl.samplers import LesionPatchSampler, RandomPatchSampler


@st.composite
def image_box_patch(draw):
    p = draw(st.integers(4, 40))
    h = draw(st.integers(p, 120))
    w = draw(st.integers(p, 120))
    bw = draw(st.integers(1, p))
    bh = draw(st.integers(1, p))
    x1 = draw(st.integers(0, max(0, w - bw)))
    y1 = draw(st.integers(0, max(0, h - bh)))
    return p, (h, w), torch.tensor([[x1, y1, min(x1 + bw, w), min(y1 + bh, h)]])


@given(image_box_patch(), st.integers(0, 2**31 - 1))
def test_windows_contain_their_box_and_stay_inside(case, seed):
    p, (h, w), boxes = case
    g = torch.Generator().manual_seed(seed)
    x1, y1, x2, y2 = boxes[0].tolist()
    for x, y in LesionPatchSampler(p).sample(boxes, (h, w), generator=g):
        assert 0 <= x <= w - p
        assert 0 <= y <= h - p
        assert x <= x1 and x2 <= x + p
        assert y <= y1 and y2 <= y + p


def test_box_filters_score_size_margin():
    sampler = LesionPatchSampler(16, min_score=0.5, margin=2)
    boxes = torch.tensor([[4, 4, 10, 10], [4, 4, 30, 10], [0, 4, 6, 10], [20, 20, 24, 24]])
    scores = torch.tensor([0.9, 0.9, 0.9, 0.4])
    assert sampler.usable(boxes, (64, 64), scores).tolist() == [True, False, False, False]
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        (x, _), _ = sampler.sample(boxes, (64, 64), scores, generator=g)
        assert x <= 4 and x + 16 >= 10
    with pytest.raises(ValueError, match="no usable lesion box"):
        sampler.sample(boxes[1:], (64, 64), scores[1:])
    with pytest.raises(ValueError, match="boxes"):
        sampler.usable(torch.zeros(3), (64, 64))
    with pytest.raises(ValueError, match="patch_size"):
        LesionPatchSampler(0)


@given(st.integers(4, 32), st.integers(0, 2**31 - 1))
def test_random_window_centre_in_mask(p, seed):
    mask = torch.zeros(64, 80, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(80), indexing="ij")
    mask[(yy - 32) ** 2 + (xx - 40) ** 2 < 28**2] = True
    x, y = RandomPatchSampler(p).sample(mask, generator=torch.Generator().manual_seed(seed))
    assert 0 <= x <= 80 - p
    assert 0 <= y <= 64 - p
    assert bool(mask[y + p // 2, x + p // 2])


def test_random_window_errors():
    with pytest.raises(ValueError, match="no foreground"):
        RandomPatchSampler(4).sample(torch.zeros(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="smaller than patch_size"):
        RandomPatchSampler(16).sample(torch.ones(8, 8, dtype=torch.bool))


def test_split_levels():
    disease = torch.tensor([0, 0, 1, 4, 2, 0])
    quality = torch.tensor([0, 2, 0, 1, 2, 1])
    levels = split_levels(disease, quality)
    assert [LEVEL_NAMES[i] for i in levels] == ["H", "LQ_H", "L", "LQ_L", "LQ_L", "LQ_H"]
    assert split_levels(disease, torch.tensor([1, 0, 1, 0, 0, 1]), "deepdrid").tolist() == [2, 3, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="unknown dataset"):
        split_levels(disease, quality, "aptos")
    with pytest.raises(ValueError, match="disease and quality"):
        split_levels(disease, quality[:2])
