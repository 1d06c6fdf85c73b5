"""Issue 28: segmentation metrics and soft Dice refuse 0/255 masks, logits, extra channels and bad smoothing."""

import math

import pytest
import torch

from qualcl.functional import soft_dice_loss
from qualcl.metrics import binarize, segmentation_metrics, segmentation_scores

MASK = torch.zeros(2, 4, 4, dtype=torch.uint8)
MASK[:, :2] = 1


def test_segmentation_metrics_refuse_0_255_masks_in_either_argument():
    wide = MASK * 255
    with pytest.raises(ValueError, match=r"target must be binary masks.*\[255, 255\].*0/255"):
        segmentation_scores(MASK.bool(), wide)
    with pytest.raises(ValueError, match=r"preds must be binary masks"):
        segmentation_metrics(wide, MASK)
    assert segmentation_metrics(MASK, MASK.bool())["dice"] == 1.0  # 0/1 integers are fine


def test_segmentation_metrics_refuse_probabilities_and_extra_channels():
    with pytest.raises(ValueError, match=r"preds must be binary masks.*binarize"):
        segmentation_scores(torch.rand(2, 4, 4), MASK)
    with pytest.raises(ValueError, match=r"target must be \(N, H, W\) or \(N, 1, H, W\) masks \(one foreground"):
        segmentation_scores(MASK.bool(), torch.stack([MASK, MASK], 1))


def test_binarize_refuses_logits():
    with pytest.raises(ValueError, match=r"probs must be probabilities in \[0, 1\].*sigmoid"):
        binarize(torch.tensor([[[-2.0, 3.0]]]))
    with pytest.raises(ValueError, match="probs must be"):
        binarize(torch.rand(1, 3, 2, 2))
    assert binarize(torch.tensor([[[0.0, 1.0]]])).tolist() == [[[False, True]]]


def test_soft_dice_refuses_logits_wide_masks_channels_and_bad_smoothing():
    probs = torch.rand(2, 1, 4, 4)
    target = MASK[:, None].float()
    with pytest.raises(ValueError, match=r"probs must hold probabilities in \[0, 1\]"):
        soft_dice_loss(probs * 6 - 3, target)
    with pytest.raises(ValueError, match=r"target must hold mask values in \[0, 1\], got values in \[0, 255\]"):
        soft_dice_loss(probs, MASK[:, None] * 255)
    with pytest.raises(ValueError, match=r"probs must be \(N, H, W\) or \(N, 1, H, W\) \(one foreground channel\)"):
        soft_dice_loss(torch.rand(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="smooth must be"):
            soft_dice_loss(probs, target, smooth=bad)
    with pytest.raises(ValueError, match="target contains"):
        soft_dice_loss(probs, torch.full_like(target, math.nan))
    assert torch.isfinite(soft_dice_loss(probs, MASK[:, None]))  # integer 0/1 and bool targets are fine
    assert torch.isfinite(soft_dice_loss(probs, MASK[:, None].bool(), smooth=0.0))


def _loop_batch_dice(probs, target, smooth):
    p, y = probs.flatten().tolist(), target.flatten().tolist()
    if sum(y) == 0:
        p, y = [1 - v for v in p], [1 - v for v in y]
    return -2 * sum(a * b for a, b in zip(p, y, strict=True)) / (sum(y) + sum(p) + smooth)


@pytest.mark.parametrize("seed", range(4))
def test_batch_form_is_one_dice_over_the_batch_and_equals_per_image_for_one_image(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(3, 1, 5, 5, generator=g, dtype=torch.float64)
    target = (torch.rand(3, 1, 5, 5, generator=g) < 0.3).double()
    target[0] = 0
    got = soft_dice_loss(probs, target, per_image=False)
    assert math.isclose(float(got), _loop_batch_dice(probs, target, 1.0), rel_tol=1e-12)
    assert not math.isclose(float(got), float(soft_dice_loss(probs, target)), rel_tol=1e-6)
    empty = torch.zeros_like(target)  # the whole batch empty: complements
    assert math.isclose(float(soft_dice_loss(probs, empty, per_image=False)), _loop_batch_dice(probs, empty, 1.0))
    one = soft_dice_loss(probs[1:2], target[1:2], per_image=False)
    assert float(one) == pytest.approx(float(soft_dice_loss(probs[1:2], target[1:2])), rel=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: soft_dice_loss(x, target, per_image=False), (probs.clone().requires_grad_(),)
    )
