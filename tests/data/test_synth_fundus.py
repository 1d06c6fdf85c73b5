"""SynthFundus generation: grade rule, lesions, masks, boxes, landmarks, patients, captions, seeds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.data.degrade import QUALITY_NAMES, quality_from_params
from qualcl.data.synthetic import (
    GRADE_NAMES,
    LESION_TYPES,
    MASK_NAMES,
    QUADRANTS,
    draw_labels,
    generate_fundus,
    generate_patient,
    grade_from_lesions,
    grade_prior,
    image_seed,
    make_caption,
)
from qualcl.data.synthetic.anatomy import render_eye
from qualcl.data.synthetic.lesions import quadrant_of


@pytest.fixture(scope="module")
def samples():
    """30 patients at 64 px and 10 at 96 px, half of the images low quality."""
    out = []
    for patient in range(30):
        out += generate_patient(patient, size=64, seed=0, lq_ratio=0.5)
    for patient in range(10):
        out += generate_patient(patient, size=96, seed=7, lq_ratio=0.5)
    return out


# ------------------------------------------------------------------ the grade rule


def _counts(ma=0, he=(0, 0, 0, 0), ex=0, nv=0):
    return {"MA": [ma, 0, 0, 0], "HE": list(he), "EX": [0, ex, 0, 0], "NV": [0, 0, nv, 0]}


def test_grade_rule_examples():
    assert grade_from_lesions(_counts()) == 0
    assert grade_from_lesions({}) == 0
    assert grade_from_lesions(_counts(ma=3)) == 1
    assert grade_from_lesions(_counts(ma=3, ex=1)) == 2
    assert grade_from_lesions(_counts(ma=3, he=(1, 0, 0, 0))) == 2
    assert grade_from_lesions(_counts(ma=3, he=(3, 3, 3, 2))) == 2
    assert grade_from_lesions(_counts(ma=3, he=(3, 3, 3, 3))) == 3
    assert grade_from_lesions(_counts(nv=1)) == 4
    assert grade_from_lesions(_counts(ma=5, he=(4, 4, 4, 4), ex=2, nv=2)) == 4


quadrant_counts = st.lists(st.integers(0, 8), min_size=4, max_size=4)


@given(ma=quadrant_counts, he=quadrant_counts, ex=quadrant_counts, nv=quadrant_counts)
def test_grade_rule_properties(ma, he, ex, nv):
    counts = {"MA": ma, "HE": he, "EX": ex, "NV": nv}
    grade = grade_from_lesions(counts)
    assert grade == grade_from_lesions({k: tuple(v) for k, v in counts.items()})  # pure
    assert (grade == 4) == (sum(nv) > 0)
    if sum(nv) == 0:
        assert (grade == 3) == (min(he) >= 3)
        assert (grade >= 2) == (sum(he) + sum(ex) > 0)
        assert (grade == 0) == (sum(ma) + sum(he) + sum(ex) == 0)
    # Adding lesions never lowers the grade.
    more = {**counts, "MA": [m + 1 for m in ma]}
    assert grade_from_lesions(more) >= grade


@pytest.mark.parametrize(
    "bad", [{"XX": [0, 0, 0, 0]}, {"MA": [1, 2, 3]}, {"MA": 3}, {"HE": [-1, 0, 0, 0]}, {"EX": "0000"}, [1, 2]]
)
def test_grade_rule_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="counts"):
        grade_from_lesions(bad)


# ------------------------------------------------------------------ generated records


def test_every_record_grade_follows_the_rule(samples):
    grades = set()
    for s in samples:
        assert s.dr_grade == grade_from_lesions(s.counts)
        record = s.to_record()
        assert record["dr_grade"] == grade_from_lesions(record["lesion_counts_by_quadrant"])
        assert record["lesion_counts"] == {k: sum(v) for k, v in s.counts.items()}
        assert quality_from_params(s.degradation) == s.quality
        grades.add(s.dr_grade)
    assert grades == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("grade", range(5))
def test_each_grade_gets_its_lesions(grade):
    for index in range(4):
        s = generate_fundus(index, size=64, seed=2, grade=grade, quality=0)
        totals = {k: sum(v) for k, v in s.counts.items()}
        assert s.dr_grade == grade == grade_from_lesions(s.counts)
        if grade == 0:
            assert sum(totals.values()) == 0
        if grade == 1:
            assert 2 <= totals["MA"] <= 5 and totals["HE"] == totals["EX"] == totals["NV"] == 0
        if grade == 2:
            assert totals["MA"] >= 2 and totals["HE"] + totals["EX"] > 0 and totals["NV"] == 0
        if grade == 3:
            assert min(s.counts["HE"]) >= 3 and totals["NV"] == 0
        if grade == 4:
            assert totals["NV"] >= 1


def test_lesions_masks_and_boxes_agree(samples):
    for s in samples:
        size = s.image.shape[0]
        assert len(s.lesions) == sum(sum(v) for v in s.counts.values())
        for kind in LESION_TYPES:
            assert s.masks[kind].any() == (sum(s.counts[kind]) > 0), (s.index, kind)
        assert s.masks["OD"].any() and s.masks["vessels"].any()
        assert set(s.masks) == set(MASK_NAMES)
        for lesion in s.lesions:
            x1, y1, x2, y2 = lesion.box
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            crop = s.masks[lesion.kind][y1:y2, x1:x2]
            # The box is tight around mask pixels: every edge row/column holds one.
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
            assert s.fov[y1:y2, x1:x2][crop].all()  # inside the FOV
            assert lesion.quadrant == quadrant_of(lesion.x, lesion.y, size, s.eye)
            assert x1 <= lesion.x + 0.5 and lesion.x - 0.5 <= x2  # centre within its box (±½ px)
        assert [b[4] for b in s.boxes] == [les.kind for les in s.lesions]


def test_lesions_are_at_least_one_pixel(samples):
    for s in samples:
        for lesion in s.lesions:
            x1, y1, x2, y2 = lesion.box
            assert s.masks[lesion.kind][y1:y2, x1:x2].sum() >= 1
            if lesion.kind in ("MA", "EX"):
                assert lesion.radius >= 1.0
        ma_sizes = [
            s.masks["MA"][y1:y2, x1:x2].sum() for les in s.lesions if les.kind == "MA" for x1, y1, x2, y2 in [les.box]
        ]
        assert all(n >= 2 for n in ma_sizes)  # a 1-px radius disc covers 2-5 pixels


def test_images_are_valid_fundus_photographs(samples):
    for s in samples:
        size = s.image.shape[0]
        assert s.image.shape == (size, size, 3) and s.image.dtype == np.float32
        assert s.image.min() >= 0 and s.image.max() <= 1
        assert not s.image[~s.fov].any() and not s.clean_image[~s.fov].any()
        assert s.fov.sum() == pytest.approx(np.pi * (0.46 * size) ** 2, rel=0.03)
        assert s.clean_image[s.fov].max(axis=1).min() > 10 / 255  # the FOV is never black
        if s.quality == 0:
            np.testing.assert_array_equal(s.image, s.clean_image)


def test_disc_is_nasal_and_fovea_temporal(samples):
    for s in samples:
        size = s.image.shape[0]
        centre = (size - 1) / 2
        dx, dy = s.disc
        if s.eye == "right":
            assert dx > centre + 0.15 * size and s.fovea[0] < dx
        else:
            assert dx < centre - 0.15 * size and s.fovea[0] > dx
        yy, xx = np.nonzero(s.masks["OD"])
        assert abs(xx.mean() - dx) < 1 and abs(yy.mean() - dy) < 1
        assert np.pi * s.disc_radius**2 == pytest.approx(s.masks["OD"].sum(), rel=0.15)


def test_disc_is_drawn_after_the_vessels(samples):
    for s in samples:
        assert not (s.masks["vessels"] & s.masks["OD"]).any()
        disc_pixels = s.clean_image[s.masks["OD"] & ~np.logical_or.reduce([s.masks[k] for k in LESION_TYPES])]
        around = s.clean_image[s.fov & ~s.masks["OD"]]
        assert disc_pixels.mean() > around.mean()  # a bright disc, not covered by dark vessels


# ------------------------------------------------------------------ patients and eyes


def _lesion_free(sample):
    mask = np.logical_or.reduce([sample.masks[k] for k in LESION_TYPES])
    padded = np.pad(mask, 2)
    grown = np.zeros_like(mask)
    for dy in range(5):
        for dx in range(5):
            grown |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return ~grown


def test_eyes_of_a_patient_share_id_background_and_mirrored_vessels(samples):
    for left, right in zip(samples[0:60:2], samples[1:60:2], strict=True):
        assert left.patient_id == right.patient_id and (left.eye, right.eye) == ("left", "right")
        assert left.patient_seed == right.patient_seed and left.anatomy.summary() == right.anatomy.summary()
        np.testing.assert_array_equal(left.masks["vessels"], right.masks["vessels"][:, ::-1])
        np.testing.assert_array_equal(left.masks["OD"], right.masks["OD"][:, ::-1])
        both = _lesion_free(left) & _lesion_free(right)[:, ::-1]
        np.testing.assert_array_equal(left.clean_image[both], right.clean_image[:, ::-1][both])
        anatomy_left = render_eye(left.anatomy, 64, "left").image
        np.testing.assert_array_equal(anatomy_left, render_eye(left.anatomy, 64, "right").image[:, ::-1])


def test_eyes_are_labelled_independently():
    pairs = [draw_labels(2 * p, seed=0) + draw_labels(2 * p + 1, seed=0) for p in range(2000)]
    grades = np.array([(a, c) for a, _, c, _ in pairs])
    assert np.mean(grades[:, 0] == grades[:, 1]) == pytest.approx(0.2, abs=0.03)  # not copied across eyes
    quality = np.array([(b, d) for _, b, _, d in pairs])
    assert np.mean(quality[:, 0] != quality[:, 1]) > 0.3  # eyes may differ in degradation


# ------------------------------------------------------------------ seeds and determinism


def test_generation_is_deterministic_and_independent_of_the_dataset_size():
    a = generate_fundus(9, size=64, seed=4)
    b = generate_fundus(9, size=64, seed=4)
    (c,) = [s for s in generate_patient(4, size=64, seed=4) if s.index == 9]
    for other in (b, c):
        np.testing.assert_array_equal(a.image, other.image)
        assert a.to_record() == other.to_record()
    assert a.seed == image_seed(9, seed=4)
    assert not np.array_equal(a.image, generate_fundus(9, size=64, seed=5).image)


def test_draw_labels_matches_generation():
    for index in range(8):
        s = generate_fundus(index, size=64, seed=3, lq_ratio=0.6, grade_prior="eyepacs")
        assert draw_labels(index, seed=3, lq_ratio=0.6, grade_prior="eyepacs") == (s.dr_grade, s.quality)


@settings(max_examples=15)
@given(
    index=st.integers(0, 10_000),
    seed=st.integers(0, 2**31),
    size=st.sampled_from([48, 64, 80]),
    grade=st.integers(0, 4),
    quality=st.integers(0, 2),
)
def test_any_seed_size_grade_and_quality_is_consistent(index, seed, size, grade, quality):
    s = generate_fundus(index, size=size, seed=seed, grade=grade, quality=quality)
    assert s.dr_grade == grade == grade_from_lesions(s.counts)
    assert s.quality == quality == quality_from_params(s.degradation)
    for kind in LESION_TYPES:
        assert s.masks[kind].any() == (sum(s.counts[kind]) > 0)
    assert not s.image[~s.fov].any() and 0 <= s.image.min() and s.image.max() <= 1


# ------------------------------------------------------------------ priors and quality ratio


def test_grade_priors():
    eyepacs = np.bincount([draw_labels(i, seed=1, grade_prior="eyepacs")[0] for i in range(3000)], minlength=5)
    assert eyepacs[0] / 3000 == pytest.approx(0.73, abs=0.03)
    balanced = np.bincount([draw_labels(i, seed=1)[0] for i in range(3000)], minlength=5)
    assert np.all(np.abs(balanced / 3000 - 0.2) < 0.03)
    custom = [draw_labels(i, seed=1, grade_prior=[0, 0, 1, 0, 0])[0] for i in range(50)]
    assert set(custom) == {2}
    np.testing.assert_allclose(grade_prior([1, 1, 2, 0, 0]), [0.25, 0.25, 0.5, 0, 0])


@pytest.mark.parametrize("lq_ratio", [0.0, 0.34, 0.7, 1.0])
def test_lq_ratio_controls_the_low_quality_fraction(lq_ratio):
    quality = np.array([draw_labels(i, seed=2, lq_ratio=lq_ratio)[1] for i in range(4000)])
    assert np.mean(quality > 0) == pytest.approx(lq_ratio, abs=0.025)
    if lq_ratio > 0:
        assert np.mean(quality == 1) == pytest.approx(np.mean(quality == 2), abs=0.03)


# ------------------------------------------------------------------ captions


def test_captions_name_eye_grade_lesions_and_quality(samples):
    for s in samples:
        caption = s.caption
        assert caption.count(f"{s.eye} eye") == 1
        assert GRADE_NAMES[s.dr_grade] in caption
        assert f"image quality {QUALITY_NAMES[s.quality]}" in caption
        totals = {k: sum(v) for k, v in s.counts.items()}
        if totals["MA"]:
            assert f"{totals['MA']} microaneurysm" in caption
        if totals["HE"]:
            assert f"{totals['HE']} haemorrhage" in caption
        if totals["NV"]:
            assert "neovascularisation" in caption
        for factor in s.degradation["factors"]:
            assert {"blur": "blur", "illumination": "illumination", "spot": "spot"}[factor] in caption


def test_caption_template_matches_the_spec_example():
    caption = make_caption(
        "left", 2, {"MA": [0, 0, 6, 0], "EX": [0, 0, 2, 0]}, 1, {"factors": {"blur": {"severity": "mild"}}}
    )
    assert caption == (
        "left eye, moderate non-proliferative diabetic retinopathy with 6 microaneurysms and 2 hard exudates "
        "in the inferior temporal quadrant; image quality usable (mild blur)"
    )
    assert QUADRANTS[2] == "inferior temporal"


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"size": 16}, "size"),
        ({"size": 47}, "size"),
        ({"size": 64.0}, "size"),
        ({"lq_ratio": 1.5}, "lq_ratio"),
        ({"lq_ratio": -0.1}, "lq_ratio"),
        ({"seed": -1}, "seed"),
        ({"grade": 5}, "grade"),
        ({"quality": 3}, "quality"),
        ({"grade_prior": "uniformish"}, "grade_prior"),
        ({"grade_prior": [1, 2]}, "grade_prior"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_fundus(0, **{"size": 64, **kwargs})


def test_bad_index_and_eyes():
    with pytest.raises(ValueError, match="index"):
        generate_fundus(-1, size=64)
    with pytest.raises(ValueError, match="eyes"):
        generate_patient(0, size=64, eyes=("middle",))
