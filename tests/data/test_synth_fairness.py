"""SynthFundus has no shortcuts (``docs/data.md``, "What makes it a fair test").

Global colour statistics (per-channel mean and std inside the FOV) must not predict the DR grade,
and quality must be independent of grade. The statistical checks come with positive controls
showing they *would* fail on a shortcut (a brightness bias of 5 % per grade step). Across seeds 0–5
the excess accuracy over the majority rate was ≤ 0.035 on the dataset images, ≤ 0.055 on the clean
images (lesions themselves shift the global statistics a little) and < 0 on the anatomy; with the
shortcut it was ≥ 0.098 (dataset) and ≥ 0.136 (clean). A 3 % shortcut hides in that noise, so exact
checks back the statistics up: outside its lesions a clean image *is* its patient's anatomy, and
forcing another grade on an image changes nothing but its lesions (both fail with a 3 % shortcut).
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from qualcl.data.synthetic import LESION_TYPES, draw_labels, generate_fundus, generate_patient
from qualcl.data.synthetic.anatomy import render_eye

SIZE = 64
PATIENTS = 400  # 800 images: the accuracy's standard error is about 0.015
SHORTCUT = 0.05  # brightness bias per grade step in the positive controls

# Chi-square critical values at p = 0.001.
CHI2_CRITICAL = {4: 18.467, 8: 26.124}


def _stats(image, mask):
    pixels = image[mask]
    return np.concatenate([pixels.mean(axis=0), pixels.std(axis=0)])


@pytest.fixture(scope="module")
def features():
    rows = {"dataset": [], "clean": [], "anatomy": [], "dataset_biased": [], "clean_biased": []}
    grade, quality, eye, group = [], [], [], []
    for patient in range(PATIENTS):
        for s in generate_patient(patient, size=SIZE, seed=0):
            bias = 1.0 + SHORTCUT * (s.dr_grade - 2)
            rows["dataset"].append(_stats(s.image, s.fov))
            rows["clean"].append(_stats(s.clean_image, s.fov))
            rows["anatomy"].append(_stats(render_eye(s.anatomy, SIZE, s.eye).image, s.fov))
            rows["dataset_biased"].append(_stats(np.clip(s.image * bias, 0, 1), s.fov))
            rows["clean_biased"].append(_stats(np.clip(s.clean_image * bias, 0, 1), s.fov))
            grade.append(s.dr_grade)
            quality.append(s.quality)
            eye.append(s.eye == "right")
            group.append(patient)
    out = {k: np.asarray(v) for k, v in rows.items()}
    out.update(grade=np.asarray(grade), quality=np.asarray(quality), eye=np.asarray(eye), group=np.asarray(group))
    return out


def _excess_accuracy(x, y, groups):
    """Cross-validated (by patient) logistic-regression accuracy minus the majority rate."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = cross_val_score(model, x, y, cv=GroupKFold(5), groups=groups).mean()
    return accuracy - np.bincount(y).max() / len(y)


def _chi_square(a, b):
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum()), (table.shape[0] - 1) * (table.shape[1] - 1)


def test_colour_statistics_do_not_predict_grade(features):
    y, g = features["grade"], features["group"]
    assert _excess_accuracy(features["dataset"], y, g) < 0.06
    # Lesions themselves shift the global statistics a little; the images before degradation:
    assert _excess_accuracy(features["clean"], y, g) < 0.08
    # Anatomy, background and brightness are drawn independently of grade: at chance.
    assert _excess_accuracy(features["anatomy"], y, g) < 0.03


def test_the_colour_check_catches_a_brightness_shortcut(features):
    y, g = features["grade"], features["group"]
    assert _excess_accuracy(features["dataset_biased"], y, g) > 0.08
    assert _excess_accuracy(features["clean_biased"], y, g) > 0.1


def _grown_lesions(sample, reach=2):
    mask = np.logical_or.reduce([sample.masks[k] for k in LESION_TYPES])
    padded = np.pad(mask, reach)
    grown = np.zeros_like(mask)
    for dy in range(2 * reach + 1):
        for dx in range(2 * reach + 1):
            grown |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return grown


def test_outside_its_lesions_a_clean_image_is_the_anatomy():
    for patient in range(20):
        for s in generate_patient(patient, size=SIZE, seed=1):
            keep = ~_grown_lesions(s)
            anatomy = render_eye(s.anatomy, SIZE, s.eye).image
            np.testing.assert_array_equal(s.clean_image[keep], anatomy[keep])


def test_forcing_a_grade_changes_only_the_lesions():
    for index in range(6):
        samples = [generate_fundus(index, size=SIZE, seed=2, grade=g) for g in range(5)]
        first = samples[0]
        for s in samples[1:]:
            assert s.anatomy.summary() == first.anatomy.summary() and s.quality == first.quality
            assert s.degradation == first.degradation
            keep = ~_grown_lesions(s) & ~_grown_lesions(first)
            np.testing.assert_array_equal(s.clean_image[keep], first.clean_image[keep])


def test_quality_and_laterality_are_independent_of_grade(features):
    statistic, dof = _chi_square(features["grade"], features["quality"])
    assert statistic < CHI2_CRITICAL[dof]
    statistic, dof = _chi_square(features["grade"], features["eye"].astype(int))
    assert statistic < CHI2_CRITICAL[dof]
    one_hot = np.eye(3)[features["quality"]]
    assert _excess_accuracy(one_hot, features["grade"], features["group"]) < 0.03


def test_quality_is_independent_of_grade_on_many_labels():
    labels = np.array([draw_labels(i, seed=11, grade_prior="eyepacs", lq_ratio=0.5) for i in range(5000)])
    statistic, dof = _chi_square(labels[:, 0], labels[:, 1])
    assert statistic < CHI2_CRITICAL[dof]


def test_the_independence_check_catches_a_dependence():
    labels = np.array([draw_labels(i, seed=11, lq_ratio=0.5) for i in range(2000)])
    grade, quality = labels[:, 0], labels[:, 1].copy()
    quality[(grade == 4) & (np.arange(len(grade)) % 3 == 0)] = 2  # a third of grade 4 forced to Reject
    statistic, dof = _chi_square(grade, quality)
    assert statistic > CHI2_CRITICAL[dof]
