"""One-shot landmark localisation: a planted neighbourhood is found exactly; centre weighting by loops."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from qualcl.evaluation import center_weighted_embeddings, landmark_template, localise_landmarks


def test_center_weighting_matches_a_loop():
    e = torch.randn(1, 3, 7, 6, dtype=torch.float64)
    sigma = 1.0
    radius = 3
    unit = F.normalize(e, dim=1)
    got = center_weighted_embeddings(e, sigma)
    for y, x in [(0, 0), (3, 2), (6, 5)]:
        acc = torch.zeros(3, dtype=torch.float64)
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if 0 <= y + dy < 7 and 0 <= x + dx < 6:
                    acc += math.exp(-(dy * dy + dx * dx) / (2 * sigma**2)) * unit[0, :, y + dy, x + dx]
        torch.testing.assert_close(got[0, :, y, x], acc / acc.norm())
    torch.testing.assert_close(center_weighted_embeddings(e, 0.0), unit)


@given(st.integers(0, 2**31 - 1), st.sampled_from([0.0, 1.0, 1.5]))
def test_a_planted_neighbourhood_is_localised_exactly(seed, sigma):
    g = torch.Generator().manual_seed(seed)
    source = torch.randn(1, 6, 24, 24, generator=g, dtype=torch.float64)
    target = torch.randn(2, 6, 24, 24, generator=g, dtype=torch.float64)
    sx, sy = (int(v) for v in torch.randint(6, 18, (2,), generator=g))
    tx, ty = (int(v) for v in torch.randint(6, 18, (2,), generator=g))
    r = 5  # >= the window radius ⌈3σ⌉: the planted block covers every weight
    target[1, :, ty - r : ty + r + 1, tx - r : tx + r + 1] = source[0, :, sy - r : sy + r + 1, sx - r : sx + r + 1]
    template = landmark_template(source, torch.tensor([[float(sx), float(sy)]]), sigma=sigma)[0]
    pred = localise_landmarks(template, target, sigma=sigma)
    assert pred.points[1].tolist() == [float(tx), float(ty)]
    assert float(pred.similarity[1, ty, tx]) == pytest.approx(1.0)
    assert pred.similarity.shape == (2, 24, 24)


def test_landmarks_reject_bad_input():
    maps = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="inside"):
        landmark_template(maps, torch.tensor([[8.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        landmark_template(maps, torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    with pytest.raises(ValueError, match="one"):
        localise_landmarks(torch.randn(2, 4), maps)
    with pytest.raises(ValueError, match="4 features"):
        localise_landmarks(torch.randn(3), maps)
    with pytest.raises(ValueError, match="sigma"):
        center_weighted_embeddings(maps, -1.0)
