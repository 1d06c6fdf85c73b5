"""Local discrimination's views: recorded turns undone exactly, reproducible draws, the mixup image."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from qualcl.data import LocalDiscriminationViews, realign_grid
from qualcl.data.augment import ColorJitterSpec
from qualcl.functional import patch_grid


def _images(n: int = 3, size: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_realign_grid_inverts_every_recorded_turn(b, d, side, seed):
    g = torch.Generator().manual_seed(seed)
    grid = torch.randn(b, d, side, side, generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    rot = torch.randint(-4, 8, (b,), generator=g)  # any integer k: quarter turns are mod 4
    turned = torch.stack(
        [torch.rot90(x.flip(-2, -1) if f else x, int(k), (-2, -1)) for x, f, k in zip(grid, flip, rot, strict=True)]
    )
    assert torch.equal(realign_grid(turned, flip, rot), grid)


@given(st.booleans(), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_patch_grids_of_a_turned_view_realign_onto_the_original(flip, k, seed):
    """Pooling commutes with the turn on a square image tiled evenly: realigned cells cover the same pixels."""
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    view = image.flip(-2, -1) if flip else image
    view = torch.rot90(view, k, (-2, -1))
    got = realign_grid(patch_grid(view, size=4), torch.tensor([flip]), torch.tensor([k]))
    torch.testing.assert_close(got, patch_grid(image, size=4))


def test_realign_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        realign_grid(torch.zeros(1, 2, 3, 4), torch.tensor([False]), torch.tensor([1]))
    assert realign_grid(torch.zeros(1, 2, 3, 4), torch.tensor([True]), torch.tensor([2])).shape == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="flip"):
        realign_grid(torch.zeros(2, 2, 3, 3), torch.tensor([False]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="integer"):
        realign_grid(torch.zeros(1, 2, 3, 3), torch.tensor([False]), torch.tensor([1.0]))


def test_second_views_realign_exactly_onto_the_first_without_photometric_noise():
    data = LocalDiscriminationViews(_images(), size=32, length=8, color=ColorJitterSpec(), view_rotation=0.0)
    for index in range(8):
        item = data[index]
        first = item.views[:2].float()
        second = realign_grid(item.views[2:].float(), item.flip, item.rot)
        assert torch.equal(second, first)
    assert any(bool(data[i].flip.any()) or bool(data[i].rot.any()) for i in range(8))  # turns were drawn


def test_items_are_reproducible_per_seed_epoch_and_index():
    data = LocalDiscriminationViews(_images(), size=24, length=4, seed=3)
    a = data[1]
    assert all(torch.equal(x, y) for x, y in zip(a, data[1], strict=True))
    data.set_epoch(1)
    assert not torch.equal(a.views, data[1].views)
    other = LocalDiscriminationViews(_images(), size=24, length=4, seed=4)
    assert not torch.equal(a.views, other[1].views)
    assert 0.2 <= float(a.weight) <= 0.8
    with pytest.raises(IndexError):
        data[4]


def test_assemble_orders_views_and_mixes_after_jitter_before_normalising():
    data = LocalDiscriminationViews(_images(), size=16, length=6, seed=1)
    batch = data.assemble(next(iter(DataLoader(data, batch_size=3, collate_fn=data.collate))))
    assert batch.images.shape == (15, 3, 16, 16) and batch.images.dtype == torch.float32
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    pixels = batch.images * std + mean
    w = batch.weight.view(-1, 1, 1, 1)
    torch.testing.assert_close(pixels[12:], w * pixels[:3] + (1 - w) * pixels[3:6])
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5
    item = data[0]  # the collated order is view-major: x1_1 of item 0 is image 0, its x2_2 image 9
    no_color = LocalDiscriminationViews(_images(), size=16, length=6, seed=1, color=ColorJitterSpec())
    plain = no_color.assemble(no_color.collate([no_color[0], no_color[1], no_color[2]]))
    expected = (no_color[0].views[3].float() / 255 - mean[0]) / std[0]
    torch.testing.assert_close(plain.images[9], expected)
    assert item.views.shape == (4, 3, 16, 16)


def test_views_reject_bad_input():
    with pytest.raises(ValueError, match="uint8 RGB"):
        LocalDiscriminationViews(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), size=8, length=2)
    with pytest.raises(ValueError, match="uint8 RGB"):
        LocalDiscriminationViews(torch.zeros(2, 3, 8, 8), size=8, length=2)
    with pytest.raises(ValueError, match="empty"):
        LocalDiscriminationViews(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), size=8, length=2)
    with pytest.raises(ValueError, match="crop_scale"):
        LocalDiscriminationViews(_images(), size=8, length=2, crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="mixup"):
        LocalDiscriminationViews(_images(), size=8, length=2, mixup=(0.8, 0.2))
    with pytest.raises(ValueError, match="size"):
        LocalDiscriminationViews(_images(), size=0, length=2)
