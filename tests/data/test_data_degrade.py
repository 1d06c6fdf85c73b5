"""Degradations after Shen et al. (TMI 2021): ranges, labels, determinism, FOV, lesion hiding."""

import hashlib
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.data.degrade import (
    FACTOR_CODES,
    FACTORS,
    apply_degradation,
    degrade_blur,
    degrade_illumination,
    degrade_image,
    degrade_spots,
    degrade_tensor,
    factor_labels,
    fov_mask,
    gaussian_blur,
    quality_from_params,
    quality_index,
    sample_degradation,
    type_code,
)
from qualcl.data.synthetic import generate_fundus

SIZE = 64
FACTOR_FUNCTIONS = {"blur": degrade_blur, "illumination": degrade_illumination, "spot": degrade_spots}


def _disc_image(size=SIZE, value=(0.7, 0.35, 0.2)):
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    fov = (xx - c) ** 2 + (yy - c) ** 2 <= (0.46 * size) ** 2
    image = np.zeros((size, size, 3), np.float32)
    image[fov] = value
    return image, fov


@pytest.fixture(scope="module")
def fundus():
    return generate_fundus(0, size=SIZE, seed=3, grade=3, quality=0)


# ------------------------------------------------------------------ determinism, range, FOV


@pytest.mark.parametrize("factor", sorted(FACTOR_FUNCTIONS))
@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1), severity=st.sampled_from(["mild", "strong", "any"]))
def test_factor_is_deterministic_in_range_and_black_outside(fundus, factor, seed, severity):
    fn = FACTOR_FUNCTIONS[factor]
    out1, p1 = fn(fundus.clean_image, np.random.default_rng(seed), severity=severity, fov=fundus.fov)
    out2, p2 = fn(fundus.clean_image, np.random.default_rng(seed), severity=severity, fov=fundus.fov)
    assert out1.dtype == np.float32 and out1.shape == fundus.clean_image.shape
    np.testing.assert_array_equal(out1, out2)
    assert p1 == p2
    assert out1.min() >= 0.0 and out1.max() <= 1.0
    assert not out1[~fundus.fov].any()
    assert p1["severity"] in (("mild", "strong") if severity == "any" else (severity,))


def test_different_generators_give_different_degradations(fundus):
    a, _ = degrade_image(fundus.clean_image, 2, np.random.default_rng(0), fov=fundus.fov)
    b, _ = degrade_image(fundus.clean_image, 2, np.random.default_rng(1), fov=fundus.fov)
    assert not np.array_equal(a, b)


def test_uint8_input_matches_float_input():
    image, fov = _disc_image()
    as_uint8 = np.round(image * 255).astype(np.uint8)
    a, _ = degrade_spots(as_uint8, np.random.default_rng(5), fov=fov)
    b, _ = degrade_spots(as_uint8.astype(np.float32) / 255, np.random.default_rng(5), fov=fov)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_fov_is_estimated_when_not_given():
    image, fov = _disc_image()
    np.testing.assert_array_equal(fov_mask(image), fov)
    out, _ = degrade_image(image, 2, np.random.default_rng(0))
    assert not out[~fov].any()


def test_good_level_leaves_the_image_unchanged(fundus):
    out, params = degrade_image(fundus.clean_image, "good", np.random.default_rng(0), fov=fundus.fov)
    np.testing.assert_array_equal(out, fundus.clean_image)
    assert params["factors"] == {} and params["code"] == "000" and quality_from_params(params) == 0


def test_recorded_params_reproduce_the_degradation(fundus):
    out, params = degrade_image(fundus.clean_image, 2, np.random.default_rng(11), fov=fundus.fov)
    np.testing.assert_array_equal(apply_degradation(fundus.clean_image, params, fundus.fov), out)


# ------------------------------------------------------------------ parameter ranges (Shen et al.)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), width=st.sampled_from([64, 96, 128]))
def test_parameters_lie_in_the_papers_ranges(seed, width):
    image, fov = _disc_image(width)
    rng = np.random.default_rng(seed)
    _, blur = degrade_blur(image, rng, fov=fov)
    assert 5 <= blur["sigma_512"] <= 15
    assert blur["sigma_px"] == pytest.approx(blur["sigma_512"] * width / 512)
    bounds = {"mild": (5, 9), "strong": (9, 15)}[blur["severity"]]
    assert bounds[0] <= blur["sigma_512"] <= bounds[1]
    _, spots = degrade_spots(image, rng, fov=fov)
    assert 5 <= spots["count"] == len(spots["spots"]) <= 10
    assert all(0.01 * width - 1e-9 <= s["radius"] <= 0.05 * width + 1e-9 for s in spots["spots"])
    _, light = degrade_illumination(image, rng, fov=fov)
    jitter = light["jitter"]
    assert 0.7 <= jitter["brightness"] <= 1.2
    assert 0.6 <= jitter["contrast"] <= 1.4
    assert 0.6 <= jitter["saturation"] <= 1.4
    assert 0.4 * width <= light["hole"]["diameter"] <= 0.7 * width
    if light["severity"] == "strong":
        assert 0.26 <= light["hole"]["depth"] <= 0.28
    assert light["halo"]["r_inner"] < light["halo"]["r_outer"]


# ------------------------------------------------------------------ quality levels and labels


@settings(max_examples=40)
@given(level=st.sampled_from([0, 1, 2, "good", "usable", "reject"]), seed=st.integers(0, 2**32 - 1))
def test_sampled_degradation_has_the_requested_level(level, seed):
    _, fov = _disc_image()
    params = sample_degradation(level, np.random.default_rng(seed), fov)
    code = quality_index(level)
    assert params["level"] == code == quality_from_params(params)
    factors = params["factors"]
    if code == 0:
        assert not factors
    elif code == 1:
        assert len(factors) == 1 and next(iter(factors.values()))["severity"] == "mild"
    else:
        assert len(factors) >= 2 or next(iter(factors.values()))["severity"] == "strong"
    assert params["code"] == type_code(factors)
    labels = factor_labels(params)
    assert {k for k, v in labels.items() if v} == set(factors)


def test_type_codes_follow_shen():
    assert FACTOR_CODES == {"illumination": "001", "spot": "010", "blur": "100"}
    assert type_code(["illumination", "spot"]) == "011"
    assert type_code(["blur", "illumination"]) == "101"
    assert type_code(["blur", "spot"]) == "110"
    assert type_code(["blur", "spot", "illumination"]) == "111"
    with pytest.raises(ValueError, match="factors"):
        type_code(["noise"])


def test_quality_mapping_rules():
    mild, strong = {"severity": "mild"}, {"severity": "strong"}
    assert quality_from_params({"factors": {}}) == 0
    assert quality_from_params({"factors": {"spot": mild}}) == 1
    assert quality_from_params({"factors": {"spot": strong}}) == 2
    assert quality_from_params({"factors": {"spot": mild, "blur": mild}}) == 2


def test_reject_level_mixes_factor_combinations():
    _, fov = _disc_image()
    rng = np.random.default_rng(0)
    codes = {sample_degradation(2, rng, fov)["code"] for _ in range(200)}
    assert {"001", "010", "100", "011", "101", "110", "111"} <= codes


# ------------------------------------------------------------------ degradations hide lesions


def _contrast(image, masks, fov, kind):
    """Mean (ring − lesion) intensity over the lesions of one type (mean of the channels)."""
    gray = image.mean(axis=2)
    lesion_any = np.zeros_like(fov)
    for name in ("MA", "HE", "EX", "NV"):
        lesion_any |= masks[name]
    yy, xx = np.mgrid[: fov.shape[0], : fov.shape[1]]
    values = []
    for x1, y1, x2, y2, box_kind in masks["boxes"]:
        if box_kind != kind:
            continue
        cx, cy = (x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2
        r = max(x2 - x1, y2 - y1) / 2
        d = np.hypot(xx - cx, yy - cy)
        inside = (d <= r) & masks[kind]
        ring = (d > r + 1) & (d <= r + 3) & ~lesion_any & fov
        if inside.any() and ring.any():
            values.append(gray[ring].mean() - gray[inside].mean())
    return np.asarray(values)


def test_blur_lowers_microaneurysm_contrast():
    drops = []
    for index in range(6):
        sample = generate_fundus(index, size=SIZE, seed=1, grade=1, quality=0)
        masks = {**sample.masks, "boxes": sample.boxes}
        before = _contrast(sample.clean_image, masks, sample.fov, "MA")
        blurred, _ = degrade_blur(sample.clean_image, np.random.default_rng(index), severity="mild", fov=sample.fov)
        after = _contrast(blurred, masks, sample.fov, "MA")
        assert before.mean() > 0.04  # visible before
        drops.append(after.mean() / before.mean())
    assert max(drops) < 0.75 and np.mean(drops) < 0.6


def test_dark_hole_lowers_haemorrhage_contrast():
    sample = generate_fundus(2, size=SIZE, seed=1, grade=3, quality=0)
    c = (SIZE - 1) / 2
    params = {
        "factors": {
            "illumination": {
                "severity": "strong",
                "jitter": {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0},
                "halo": {"x": c, "y": c, "r_outer": 1.0, "r_inner": 0.5, "sigma": 1.0, "alpha": 0.0, "tint": [1, 1, 1]},
                "hole": {"x": c, "y": c, "diameter": 0.7 * SIZE, "sigma": 0.05 * SIZE, "depth": 0.27},
            }
        }
    }
    dark = apply_degradation(sample.clean_image, params, sample.fov)
    central = [b for b in sample.boxes if np.hypot((b[0] + b[2]) / 2 - c, (b[1] + b[3]) / 2 - c) < 0.25 * SIZE]
    masks = {**sample.masks, "boxes": central}
    before = _contrast(sample.clean_image, masks, sample.fov, "HE")
    after = _contrast(dark, masks, sample.fov, "HE")
    assert before.size >= 2 and before.mean() > 0.1
    assert after.mean() < 0.5 * before.mean()


def test_gaussian_blur_keeps_constants_and_stays_in_mask():
    image, fov = _disc_image()
    out = gaussian_blur(image, 3.0, mask=fov)
    np.testing.assert_allclose(out[fov], image[fov], atol=1e-5)
    assert not out[~fov].any()


# ------------------------------------------------------------------ torch helper


def test_degrade_tensor_single_and_batch_are_reproducible(fundus):
    single = torch.from_numpy(fundus.clean_image).permute(2, 0, 1).contiguous()
    batch = torch.stack([single, single.flip(-1)])
    a = degrade_tensor(batch, 2, generator=torch.Generator().manual_seed(0))
    b = degrade_tensor(batch, 2, generator=torch.Generator().manual_seed(0))
    c = degrade_tensor(batch, 2, seed=123)
    assert a.shape == batch.shape and a.dtype == batch.dtype
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1].flip(-1))  # each image gets its own degradation
    fov = torch.from_numpy(fundus.fov)
    assert a.min() >= 0 and a.max() <= 1 and not a[:, :, ~fov].any()
    one = degrade_tensor(single, "usable", seed=5)
    assert one.shape == single.shape
    torch.testing.assert_close(one, degrade_tensor(single, 1, seed=5))
    good = degrade_tensor(batch, [0, 0], seed=1)
    torch.testing.assert_close(good, batch * fov)


def test_degrade_tensor_keeps_uint8():
    image, _ = _disc_image()
    as_uint8 = torch.from_numpy(np.round(image * 255).astype(np.uint8)).permute(2, 0, 1)
    out = degrade_tensor(as_uint8, 2, seed=0)
    assert out.dtype == torch.uint8 and out.shape == as_uint8.shape


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "bad",
    [np.zeros((SIZE, SIZE)), np.zeros((SIZE, SIZE, 4)), np.zeros((3, SIZE, SIZE)), np.zeros((4, 4, 3)), [[0.0]]],
)
def test_wrong_image_shapes_are_rejected(bad):
    with pytest.raises(ValueError, match="image"):
        degrade_blur(bad, np.random.default_rng(0))


def test_bad_arguments_name_themselves():
    image, fov = _disc_image()
    with pytest.raises(ValueError, match="image"):
        degrade_image(image * 2.0, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="fov"):
        degrade_image(image, 1, np.random.default_rng(0), fov=fov[:10])
    with pytest.raises(ValueError, match="severity"):
        degrade_spots(image, np.random.default_rng(0), severity="huge")
    with pytest.raises(ValueError, match="level"):
        degrade_image(image, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="level"):
        degrade_image(image, "bad", np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        degrade_blur(image, 0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(image, 0.0)
    with pytest.raises(ValueError, match="no field of view"):
        fov_mask(np.zeros((SIZE, SIZE, 3), np.float32))
    with pytest.raises(ValueError, match="factors"):
        apply_degradation(image, {"factors": {"rain": {"severity": "mild"}}})
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    with pytest.raises(ValueError, match="images"):
        degrade_tensor(tensor[:2], 1, seed=0)
    with pytest.raises(ValueError, match="generator or seed"):
        degrade_tensor(tensor, 1, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="level"):
        degrade_tensor(tensor.unsqueeze(0).repeat(2, 1, 1, 1), [1, 2, 0], seed=0)


# ------------------------------------------------------------------ regression: outputs for fixed seeds

# Fingerprints of degradations computed before the factor functions moved into one table: a digest
# of the parameters (floats to 9 significant digits, so a last-bit libm difference cannot flip it)
# and two sums of the image (compared to 1e-9 relative; numpy's FFT may differ in the last bit
# between versions). A change in how much randomness a factor draws, or in what order, or in the
# order factors are applied, moves both.
REFERENCE_FINGERPRINTS = {
    "level1-seed0": ("6147492fff2173fe", 2292.1641504839063, 2298.6234636543286),
    "level2-seed0": ("081da88a1c84423f", 2301.5285657793283, 2302.6058605220123),
    "level1-seed1": ("795021427a348950", 2184.6420321911573, 2148.8957285761107),
    "level2-seed1": ("83696c9134253398", 2258.1231955066323, 2258.2822300491684),
    "level1-seed2": ("58def92903216f05", 2289.8552561476827, 2292.0651790571114),
    "level2-seed2": ("fa6675aaf8e10262", 2272.4626025259495, 2277.776117231293),
    "level1-seed3": ("c565e35863962002", 2296.102902509272, 2301.2986467513933),
    "level2-seed3": ("9eed07933e0b7411", 2272.4632609188557, 2277.775025251134),
    "blur-mild": ("d3e0650b5ccba269", 2271.774532407522, 2276.94321752581),
    "blur-strong": ("3dc2709273bd77b0", 2272.457122951746, 2277.743794412458),
    "blur-any": ("ebc3f7dea585185b", 2272.454753547907, 2277.7791439687903),
    "illumination-mild": ("d1246c77bf8965a7", 2103.743640410248, 2097.4605757748122),
    "illumination-strong": ("d274c285bad7c128", 2353.7081588357687, 2383.8838496893472),
    "illumination-any": ("40c4b9bdd3d46e3b", 2290.130405962467, 2295.213495759778),
    "spots-mild": ("9207eedcff72aa1e", 2301.1714670732617, 2302.599011850055),
    "spots-strong": ("90d36f437ebc27db", 2486.4412972182035, 2482.214072173833),
    "spots-any": ("536c2fb31787cba3", 2455.1421437859535, 2454.7497030534564),
}


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _fingerprint(image, params):
    weights = np.linspace(0.5, 1.5, image.size).reshape(image.shape)
    digest = hashlib.sha256(json.dumps(_rounded(params)).encode()).hexdigest()[:16]
    return digest, float(image.sum(dtype=np.float64)), float((image * weights).sum())


def _textured_disc(size=48):
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    fov = (xx - c) ** 2 + (yy - c) ** 2 <= (0.46 * size) ** 2
    image = np.random.default_rng(0).uniform(0.1, 0.9, (size, size, 3)).astype(np.float32) * fov[:, :, None]
    return image, fov


def _degrade_case(case, image, fov):
    name, tail = case.split("-")
    if name.startswith("level"):
        return degrade_image(image, int(name[-1]), np.random.default_rng(int(tail.removeprefix("seed"))), fov=fov)
    fn = {"blur": degrade_blur, "illumination": degrade_illumination, "spots": degrade_spots}[name]
    return fn(image, np.random.default_rng(7), severity=tail, fov=fov)


@pytest.mark.parametrize("case", sorted(REFERENCE_FINGERPRINTS))
def test_degradations_match_their_recorded_fingerprints(case):
    image, fov = _textured_disc()
    out, params = _degrade_case(case, image, fov)
    digest, total, weighted = _fingerprint(out, params)
    expected = REFERENCE_FINGERPRINTS[case]
    assert digest == expected[0]
    assert total == pytest.approx(expected[1], rel=1e-9)
    assert weighted == pytest.approx(expected[2], rel=1e-9)
    if case.startswith("level"):
        np.testing.assert_array_equal(apply_degradation(image, params, fov), out)


def test_factor_labels_follow_the_factor_order():
    params = {"factors": {"spot": {"severity": "mild"}, "blur": {"severity": "strong"}}}
    assert tuple(factor_labels(params)) == FACTORS
    assert factor_labels(params) == {"blur": 1, "illumination": 0, "spot": 1}
