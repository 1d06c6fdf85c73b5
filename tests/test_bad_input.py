"""Bad input gets a named error, never a silently wrong number: one test per class of defect.

Each check is shared (``qualcl._validation``), so these tests go through the public entry points
that use it: metrics, labels and levels, heads, the normalising losses, focal loss, the miner, the
patch samplers and the image and CSV readers.
"""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.metrics import cohen_kappa_score
from torch import Tensor

from qualcl import functional, kernels
from qualcl._validation import check_class_ids, check_int, check_number, check_scalar
from qualcl.data.images import open_image
from qualcl.data.levels import split_levels
from qualcl.data.readers._files import read_csv_rows
from qualcl.heads import CBAM, ChannelGate, GlobalAttentionBlock, MetaKnowledgeAssistanceBlock, ProjectionHead
from qualcl.losses import ClipLoss, FocalLoss, InfoNCE, MultiLevelInfoNCE, NTXentLoss, SigLipLoss
from qualcl.metrics import (
    binary_auroc,
    cohen_kappa,
    diagnosis_metrics,
    grading_metrics,
    quadratic_weighted_kappa,
)
from qualcl.samplers import CosineCountSchedule, LesionPatchSampler, LevelBalancedBatchSampler
from qualcl.samplers import SelfPacedHardNegativeMiner as Miner

NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize(
    ("preds", "target", "error", "message"),
    [
        ([0, 5, 1], [0, 1, 1], ValueError, r"preds must hold class ids in \[0, 2\], got out-of-range id\(s\) \[5\]"),
        ([0, 4, 4, 2], [0, 1, 1, 2], ValueError, r"out-of-range id\(s\) \[4\]"),
        ([0, 1, 1], [0, -1, 1], ValueError, r"target must hold class ids"),
        ([0.0, 1.0, 1.0], [0, 1, 1], TypeError, "preds must be an integer tensor"),
    ],
)
def test_grading_metrics_refuse_ids_outside_the_classes(preds, target, error, message):
    with pytest.raises(error, match=message):
        grading_metrics(torch.tensor(preds), torch.tensor(target), 3)


def test_scores_must_be_finite():
    with pytest.raises(ValueError, match="scores contains 1 non-finite"):
        binary_auroc(torch.tensor([NAN, 0.2, 0.4]), torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="probs contains"):
        diagnosis_metrics(torch.tensor([[NAN, 0.5], [0.2, 0.8]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="positive must hold booleans or 0/1"):
        binary_auroc(torch.tensor([0.1, 0.2]), torch.tensor([2, 0]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 4, 9]), st.sampled_from([1, 4, 9])), min_size=2, max_size=30))
def test_kappas_take_labels_like_scikit_learn(pairs):
    truth, pred = (torch.tensor(v) for v in zip(*pairs, strict=True))
    for weights, ours in (("quadratic", quadratic_weighted_kappa), (None, cohen_kappa)):
        theirs = cohen_kappa_score(truth.numpy(), pred.numpy(), labels=[1, 4, 9], weights=weights)
        got = ours(pred, truth, labels=[1, 4, 9])
        assert (math.isnan(got) and math.isnan(theirs)) or got == pytest.approx(theirs, abs=1e-6)


def test_kappa_class_contract_errors():
    ids = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="not in labels"):
        cohen_kappa(torch.tensor([1, 3]), torch.tensor([1, 1]), labels=[1, 2])
    with pytest.raises(ValueError, match="num_classes or labels, not both"):
        cohen_kappa(ids, ids, 3, labels=[0, 1, 2])
    with pytest.raises(ValueError, match="give num_classes"):
        cohen_kappa(ids, ids)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        quadratic_weighted_kappa(ids, ids, 1)


# ----------------------------------------------------------------------------- labels and levels
def test_split_levels_refuses_unknown_codes_and_bad_labels():
    with pytest.raises(ValueError, match=r"quality holds unknown code\(s\) \[7\]"):
        split_levels(torch.tensor([0, 1]), torch.tensor([7, 0]))
    with pytest.raises(ValueError, match=r"unknown code\(s\) \[2\]"):
        split_levels(torch.tensor([0, 1]), torch.tensor([2, 0]), "deepdrid")
    with pytest.raises(ValueError, match="disease labels must be >= 0"):
        split_levels(torch.tensor([-1, 1]), torch.tensor([0, 0]))
    with pytest.raises(TypeError, match="disease must be an integer tensor"):
        split_levels(torch.tensor([0.0, 1.0]), torch.tensor([0, 0]))
    custom = split_levels(torch.tensor([0, 2]), torch.tensor([5, 3]), {5}, quality_codes={3, 5})
    assert custom.tolist() == [3, 0]


def test_fractional_level_ids_are_refused_not_truncated():
    with pytest.raises(TypeError, match="levels must be an integer tensor"):
        LevelBalancedBatchSampler([0.5, 1, 0, 1], 1)
    with pytest.raises(TypeError, match="levels must be an integer tensor"):
        LevelBalancedBatchSampler(torch.tensor([0.0, 1.0]), 1)


@pytest.mark.parametrize(
    ("pairs", "weights", "message"),
    [
        ([(0, 0)], None, "same-level negatives"),
        ([(0, -1)], None, "negative level must be an int >= 0"),
        ([(0, 1.5)], None, "must be an int"),
        ([(0, 1)], [NAN], "pair_weights must be a finite number >= 0"),
        ([(0, 1)], [INF], "pair_weights must be a finite number >= 0"),
        ([(0, 1)], [-1.0], "pair_weights must be a finite number >= 0"),
        ([(0, 1)], [1.0, 2.0], "one weight per pair"),
        ([], None, "non-empty"),
    ],
)
def test_multi_level_pairs_and_weights_are_checked(pairs, weights, message):
    z = torch.randn(8, 4)
    levels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises((TypeError, ValueError), match=message):
        functional.multi_level_info_nce(z, z, levels, pairs, pair_weights=weights)


def test_multi_level_module_refuses_out_of_range_levels_and_weights():
    with pytest.raises(ValueError, match="pair_weights must be a finite number"):
        MultiLevelInfoNCE(pair_weights=(INF, 1, 1))
    with pytest.raises(ValueError, match=r"unknown level id\(s\) \[4\]"):
        MultiLevelInfoNCE()(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 4]))


# ---------------------------------------------------------------------------------------- heads
def _heads():
    return [
        (CBAM(8, 4), (2, 8, 4, 4)),
        (ChannelGate(8, 4), (2, 8, 4, 4)),
        (GlobalAttentionBlock(8, 6), (2, 8, 4, 4)),
        (ProjectionHead((8, 4)), (2, 8)),
    ]


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("index", range(4))
def test_heads_refuse_non_finite_input(index, bad):
    head, shape = _heads()[index]
    x = torch.randn(shape)
    x.view(-1)[3] = bad
    with pytest.raises(ValueError, match="x contains 1 non-finite"):
        head(x)


@pytest.mark.parametrize("index", range(4))
def test_heads_refuse_integer_input_naming_it(index):
    head, shape = _heads()[index]
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        head(torch.ones(shape, dtype=torch.long))


def test_meta_knowledge_block_checks_both_inputs():
    block = MetaKnowledgeAssistanceBlock(6)
    with pytest.raises(ValueError, match="co_embedding contains"):
        block(torch.randn(2, 4), torch.full((2, 6), NAN))
    with pytest.raises(ValueError, match="co_embedding must have 6 features"):
        block(torch.randn(2, 4), torch.randn(2, 5))


def test_projection_head_widths_and_batch_statistics():
    with pytest.raises(TypeError, match=r"dims\[0\] must be an int >= 1, got float 8.7"):
        ProjectionHead((8.7, 3.2))
    with pytest.raises(ValueError, match="at least two layer widths"):
        ProjectionHead((8,))
    head = ProjectionHead((8, 4, 2), batch_norm=True)
    with pytest.raises(ValueError, match=r"x must have 8 features"):
        head(torch.randn(2, 7))
    with pytest.raises(ValueError, match="BatchNorm in training mode needs more than one"):
        head(torch.randn(1, 8))
    assert head.eval()(torch.randn(1, 8)).shape == (1, 2)  # running statistics: one sample is fine
    with pytest.raises(ValueError, match="BatchNorm in training mode"):
        CBAM(8, 4)(torch.randn(1, 8, 1, 1))


# ----------------------------------------------------------------------------- edge numerics
def _zero_row(n=4, d=8):
    z = torch.randn(n, d)
    z[1] = 0
    return z


@pytest.mark.parametrize(
    "call",
    [
        lambda z, w: functional.info_nce(z, w),
        lambda z, w: InfoNCE()(z, w),
        lambda z, w: NTXentLoss()(z, w),
        lambda z, w: ClipLoss()(z, w),
        lambda z, w: kernels.fused_info_nce(z, w, positive_index=torch.arange(4)),
        lambda z, w: kernels.topk_similarity(z, w, 2),
        lambda z, w: MultiLevelInfoNCE()(z, w, torch.tensor([0, 1, 2, 3])),
        lambda z, w: Miner(CosineCountSchedule(None, 10)).mine(z, w, step=0),
    ],
    ids=[
        "functional.info_nce",
        "InfoNCE",
        "NTXentLoss",
        "ClipLoss",
        "kernels.fused_info_nce",
        "topk",
        "multi",
        "miner",
    ],
)
def test_zero_rows_are_refused_wherever_rows_are_normalised(call):
    with pytest.raises(ValueError, match=r"all-zero row\(s\) \(first: \[1\]\)"):
        call(_zero_row(), torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"all-zero row"):
        call(torch.randn(4, 8), _zero_row())


def test_unnormalised_paths_accept_zero_rows():
    values, _ = kernels.topk_similarity(_zero_row(), torch.randn(4, 8), 2, normalize=False)
    assert bool(torch.isfinite(values).all())


@settings(max_examples=40, deadline=None)
@given(st.floats(0.05, 0.99), st.floats(20.0, 2000.0), st.sampled_from([torch.float32, torch.float64]))
def test_focal_loss_gradients_are_finite_on_confident_rows(gamma, margin, dtype):
    logits = torch.tensor([[margin, 0.0], [0.3, -0.2]], dtype=dtype, requires_grad=True)
    loss = functional.focal_loss(logits, torch.tensor([0, 1]), gamma=gamma)
    loss.backward()
    assert math.isfinite(loss.item()) and bool(torch.isfinite(logits.grad).all())
    assert float(logits.grad[0].abs().max()) < 1e-6  # the confident row's exact gradient vanishes


def test_focal_loss_matches_its_float64_definition_away_from_the_edge():
    logits = torch.randn(6, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    p = logits.softmax(dim=1)[torch.arange(6), target]
    expected = (-((1 - p) ** 0.5) * p.log()).mean()
    assert torch.allclose(functional.focal_loss(logits, target, gamma=0.5), expected, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: FocalLoss(gamma=INF), lambda: FocalLoss(gamma=NAN), lambda: FocalLoss(-1)])
def test_focal_loss_gamma_must_be_finite_and_non_negative(make):
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        make()


def test_samplers_refuse_nan_settings_and_similarities():
    with pytest.raises(ValueError, match="min_score must be a finite number"):
        LesionPatchSampler(16, min_score=NAN)
    with pytest.raises(ValueError, match="margin must be an int >= 0"):
        LesionPatchSampler(16, margin=-1)
    miner = Miner(CosineCountSchedule(None, 10))
    with pytest.raises(ValueError, match="negative_sim contains"):
        miner(torch.zeros(3), torch.full((3, 5), NAN), temperature=0.1, step=0)
    with pytest.raises(ValueError, match="positive_sim contains"):
        miner(torch.full((3,), INF), torch.zeros(3, 5), temperature=0.1, step=0)


@pytest.mark.parametrize("total", [7, 8, 50])
def test_miner_caps_k_at_the_candidates_of_each_row(total):
    # a fixed schedule total >= the candidates: PML index -1 or a bare torch error before
    miner = Miner(CosineCountSchedule(total=total, max_steps=10), threshold="off")
    _, _, a2, n = miner.mine(torch.randn(8, 4), torch.randn(8, 4), step=0)
    assert int(n.min()) >= 0 and int(n.max()) < 8 and bool((a2 != n).all())
    assert len(n) == 8 * 7  # every other row, once
    keep, _ = miner(torch.randn(3), torch.randn(3, 5), temperature=0.1, step=0)
    assert keep.sum(dim=1).tolist() == [5, 5, 5]
    loss = MultiLevelInfoNCE(miner=miner)(torch.randn(8, 4), torch.randn(8, 4), torch.arange(8) % 4, step=0)
    assert math.isfinite(float(loss))


# ------------------------------------------------------------------------------------- images
def test_16_bit_images_are_scaled_by_their_bit_depth(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.int64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    grey = np.asarray(open_image(tmp_path / "wide.png", "L"))
    assert (grey == 255).mean() < 0.01  # PIL's own convert("L") clips: 99.6 % white
    np.testing.assert_array_equal(grey, np.rint(ramp / 257.0).astype(np.uint8))
    rgb = np.asarray(open_image(tmp_path / "wide.png", "RGB"))
    np.testing.assert_array_equal(rgb[..., 0], grey)


def test_truncated_and_non_image_files_are_named(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8) + 100).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"cut\.png: cannot read the image"):
        open_image(tmp_path / "cut.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(OSError, match=r"notes\.png is not an image file"):
        open_image(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        open_image(tmp_path / "missing.png")


def test_a_header_only_csv_is_an_error(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("image,quality,DR_grade\n")
    with pytest.raises(ValueError, match="has a header but no data rows"):
        read_csv_rows(path, ["image", "quality", "DR_grade"])
    assert read_csv_rows(path, ["image"], allow_empty=True) == []


# --------------------------------------------------------------------------- the shared checks
@given(st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.booleans(), st.text(max_size=2)))
def test_check_int_accepts_exactly_the_integers_in_range(value):
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        assert check_int("k", value) == value
    else:
        with pytest.raises((TypeError, ValueError), match="k must be an int >= 1"):
            check_int("k", value)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_check_number_bounds(value):
    ok = math.isfinite(value) and 0 <= value <= 1
    if ok:
        assert check_number("p", value, minimum=0, maximum=1) == value
    else:
        with pytest.raises(ValueError, match="p must be a finite number >= 0 and <= 1"):
            check_number("p", value, minimum=0, maximum=1)


@given(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=2)),
    st.sampled_from(["number", "tensor", "row"]),
    st.booleans(),
)
def test_check_scalar_accepts_finite_numbers_and_one_element_tensors(value, form, positive):
    if form != "number" and isinstance(value, float):
        value = torch.tensor(value if form == "tensor" else [value], requires_grad=True)
    number = float(value.detach()) if isinstance(value, Tensor) else value if isinstance(value, float) else None
    if number is not None and math.isfinite(number) and (number > 0 or not positive):
        checked = check_scalar("s", value, positive=positive)
        assert float(checked.detach() if isinstance(checked, Tensor) else checked) == number
        if isinstance(value, Tensor):  # a 0-dim view: the gradient reaches the caller's tensor
            assert checked.dim() == 0 and checked.requires_grad
            checked.backward()
            assert value.grad is not None and float(value.grad.sum()) == 1.0
    else:
        with pytest.raises((TypeError, ValueError), match="^s "):
            check_scalar("s", value, positive=positive)


def _scalar_takers():
    """Every public entry point that takes a scale, bias or temperature as a number or a tensor."""
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    rows = torch.arange(4)
    return {
        "ClipLoss logit_scale": ("logit_scale", lambda s: ClipLoss()(x, y, s)),
        "ClipLoss logit_bias": ("logit_bias", lambda b: ClipLoss()(x, y, 10.0, b)),
        "SigLipLoss logit_scale": ("logit_scale", lambda s: SigLipLoss()(x, y, s)),
        "SigLipLoss logit_bias": ("logit_bias", lambda b: SigLipLoss()(x, y, 10.0, b)),
        "fused_siglip logit_scale": ("logit_scale", lambda s: kernels.fused_siglip(x, y, s)),
        "fused_siglip logit_bias": ("logit_bias", lambda b: kernels.fused_siglip(x, y, 10.0, b)),
        "fused_info_nce temperature": (
            "temperature",
            lambda t: kernels.fused_info_nce(x, y, positive_index=rows, temperature=t),
        ),
    }


@pytest.mark.parametrize("taker", list(_scalar_takers()))
@pytest.mark.parametrize(
    ("bad", "error", "what"),
    [
        (NAN, ValueError, "must be a finite number"),
        (INF, ValueError, "must be a finite number"),
        (
            torch.tensor([1.0, 2.0]),
            ValueError,
            r"floating tensor, got a torch.float32 tensor of shape \(2,\)",
        ),
        (torch.tensor(3), ValueError, "one-element floating tensor, got a torch.int64 tensor"),
        (torch.tensor(NAN), ValueError, "contains 1 non-finite"),
        ("1", TypeError, "must be a float or a one-element floating tensor, got str '1'"),
        (True, TypeError, "got bool True"),
    ],
)
def test_scales_biases_and_temperatures_refuse_bad_values_by_name(taker, bad, error, what):
    name, call = _scalar_takers()[taker]
    with pytest.raises(error, match=f"^{name} .*{what}"):
        call(bad)
    if name != "logit_bias":  # a scale or temperature must be positive, as a number and as a tensor
        for negative in (-1.0, torch.tensor(-1.0)):
            with pytest.raises(ValueError, match=f"^{name} must be .*> 0"):
                call(negative)
    assert torch.isfinite(call(torch.tensor(2.0, dtype=torch.float64)))  # and a good value passes


@given(st.lists(st.integers(-3, 6), min_size=1, max_size=20))
def test_check_class_ids(values):
    ids = torch.tensor(values)
    if all(0 <= v < 4 for v in values):
        assert check_class_ids("y", ids.int(), 4).dtype == torch.int64
    else:
        bad = sorted({v for v in values if not 0 <= v < 4})[:5]
        message = re.escape(f"y must hold class ids in [0, 3], got out-of-range id(s) {bad}")
        with pytest.raises(ValueError, match=message):
            check_class_ids("y", ids, 4)
