"""MKCNet recipe pieces: Task Net variants, Meta Learner masks, the two-pass sampler, splits, one step of each stage."""

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from _mkcnet_fixtures import ct_tree
from hypothesis import given
from hypothesis import strategies as st

from qualcl.data import ImageTable
from qualcl.data.readers import QualityLabelledRecord
from qualcl.functional import batch_entropy, focal_loss
from qualcl.recipes.ablation import ablation_table, variant_config
from qualcl.recipes.config import apply_overrides, load_config, save_config
from qualcl.recipes.mkcnet import (
    ABLATIONS,
    DATASETS,
    MKCNET,
    MkcnetConfig,
    MkcnetTraining,
    ModelConfig,
    TaskNet,
    TrainConfig,
    build_meta_learner,
    build_task_net,
    mkcnet_config,
)
from qualcl.recipes.mkcnet.config import LQ_SWEEP, SWEEP_BASES
from qualcl.recipes.mkcnet.data import (
    MKCNET_QUALITY,
    MkcnetDataset,
    TwoPassBatchSampler,
    keep_lq_fraction,
    load_splits,
    mkcnet_sizes,
    normalisation,
    random_split,
)
from qualcl.recipes.mkcnet.model import mask_labels
from qualcl.recipes.mkcnet.modules import step_lr

SMALL = ModelConfig(feature_dim=16, slice_length=2)
COMPONENTS = [name for name in ABLATIONS if "@" not in name]


@pytest.mark.parametrize("name", COMPONENTS)
def test_every_variant_builds_and_gives_the_heads_it_declares(name):
    config = apply_overrides(MkcnetConfig(model=SMALL), ABLATIONS[name].overrides).model
    task = build_task_net(config, 3, num_diagnosis=3, num_quality=2)
    meta = build_meta_learner(config, 3, num_diagnosis=3, num_quality=2)
    out = task(torch.randn(2, 3, 48, 48))
    assert out.diagnosis.shape == (2, 3)
    assert (out.quality is None) == (not config.quality_head)
    assert (out.co_embedding is None) == (not config.meta)
    assert (meta is None) == (not config.meta)
    if meta is not None:
        assert out.co_embedding.shape == (2, 2 * 3 * 2)
        assert meta.num_outputs == 12  # masking by one label regroups, never resizes
    again, feature = task.eval().forward_with_feature(x := torch.randn(2, 3, 48, 48))
    assert torch.equal(again.diagnosis, task(x).diagnosis)
    assert feature.shape[1] == (16 if config.assist == "none" else 32)


def test_pooled_gab_input_and_grey_images():
    config = dataclasses.replace(SMALL, gab_input="pooled")
    task = build_task_net(config, 1, 2, 2)
    assert task.features == "pooled"
    assert task(torch.randn(3, 1, 48, 48)).diagnosis.shape == (3, 2)


def test_task_net_rejects_inconsistent_switches():
    backbone = build_task_net(SMALL, 3, 3, 3).backbone
    with pytest.raises(ValueError, match="needs its branch"):
        TaskNet(backbone, 3, 3, None, feature_dim=16)
    with pytest.raises(ValueError, match="quality_head=True"):
        TaskNet(backbone, 3, 3, 18, feature_dim=16, assist_from="quality", quality_head=False)
    with pytest.raises(ValueError, match="gab must be"):
        TaskNet(backbone, 3, 3, 18, gab="transformer")
    with pytest.raises(ValueError, match="mask_by"):
        build_meta_learner(dataclasses.replace(SMALL, mask_by="patient"), 3, 3, 3)
    with pytest.raises(ValueError, match="init"):
        build_task_net(dataclasses.replace(SMALL, init="he"), 3, 3, 3)


@pytest.mark.parametrize("mask_by", ["joint", "quality", "diagnosis"])
def test_meta_targets_live_on_the_slice_of_the_masking_label(mask_by):
    n_d, n_q, length = 3, 2, 2
    meta = build_meta_learner(dataclasses.replace(SMALL, mask_by=mask_by), 3, n_d, n_q).eval()
    d, q = torch.tensor([0, 2, 1, 2]), torch.tensor([1, 0, 1, 1])
    target = meta(torch.randn(4, 3, 48, 48), *mask_labels(mask_by, d, q))
    assert torch.allclose(target.sum(1), torch.ones(4))
    for i in range(4):
        if mask_by == "joint":
            start, width = (q[i] * n_d + d[i]) * length, length
        elif mask_by == "quality":
            start, width = q[i] * n_d * length, n_d * length
        else:
            start, width = d[i] * n_q * length, n_q * length
        support = torch.nonzero(target[i] > 0).flatten()
        assert support.min() >= start and support.max() < start + width


@given(st.integers(2, 40), st.integers(2, 9), st.integers(1, 2), st.integers(0, 5))
def test_two_pass_sampler_yields_each_pass_as_a_permutation(n, batch_size, passes, epoch):
    sampler = TwoPassBatchSampler(n, batch_size, passes, seed=3)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert len(batches) == len(sampler) == passes * sampler.batches_per_pass
    assert all(len(b) >= 2 for b in batches)
    for p in range(passes):
        seen = [
            i - p * n for b in batches[p * sampler.batches_per_pass : (p + 1) * sampler.batches_per_pass] for i in b
        ]
        assert all(0 <= i < n for i in seen)
        assert len(set(seen)) == len(seen) >= n - 1  # only a lone last item may be dropped
    assert batches == list(sampler)  # the same epoch gives the same order


def test_two_pass_sampler_reshuffles_per_epoch_and_checks_arguments():
    sampler = TwoPassBatchSampler(30, 4, 2, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert first[0] != [i - 30 for i in first[sampler.batches_per_pass]]  # the two passes differ
    sampler.set_epoch(0)
    assert list(sampler) == first  # a pure function of (seed, epoch): a resumed epoch repeats exactly
    with pytest.raises(ValueError, match="batch_size >= 2"):
        TwoPassBatchSampler(10, 1, 2, 0)
    with pytest.raises(ValueError, match="passes"):
        TwoPassBatchSampler(10, 2, 0, 0)


def _records(n, lq_every=3):
    return [
        QualityLabelledRecord(Path(f"{i}.png"), i % 5, int(i % lq_every == 0), f"p{i // 2}", "eyeq", "eyeq")
        for i in range(n)
    ]


@given(st.integers(2, 60), st.floats(0.0, 0.9))
def test_random_split_keeps_patients_together_and_is_seeded(n, fraction):
    records = _records(n)
    kept, held = random_split(records, fraction, seed=1)
    assert sorted(r.image.name for r in kept + held) == sorted(r.image.name for r in records)
    assert not {r.patient_id for r in kept} & {r.patient_id for r in held}
    assert random_split(records, fraction, seed=1) == (kept, held)
    patients = len({r.patient_id for r in records})
    if fraction > 0 and patients >= 2:
        assert held and kept


@given(st.integers(1, 60), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))
def test_keep_lq_fraction_keeps_all_hq_and_a_share_of_lq(n, fraction):
    records = _records(n)
    kept = keep_lq_fraction(records, fraction, seed=0)
    lq = [r for r in records if r.quality > 0]
    assert [r for r in kept if r.quality == 0] == [r for r in records if r.quality == 0]
    assert len([r for r in kept if r.quality > 0]) == round(fraction * len(lq))
    assert kept == [r for r in records if r in kept]  # original order
    with pytest.raises(ValueError, match="train_lq_fraction"):
        keep_lq_fraction(records, 1.5, 0)


def test_step_lr_and_config_round_trip(tmp_path):
    assert [step_lr(0.01, e, 2, 0.5) for e in range(5)] == [0.01, 0.01, 0.005, 0.005, 0.0025]
    for dataset, settings in DATASETS.items():
        config = mkcnet_config("paper", dataset=dataset)
        assert config.model.slice_length == settings.slice_length
        assert config.train.epochs == settings.epochs and config.data.channels == settings.channels
        save_config(config, tmp_path / f"{dataset}.yaml")
        assert load_config(MkcnetConfig, tmp_path / f"{dataset}.yaml") == config
    with pytest.raises(ValueError, match="data.dataset must be one of"):
        mkcnet_config("default", dataset="aptos")
    with pytest.raises(ValueError, match="unknown preset"):
        mkcnet_config("huge")


def _tiny_module(meta=True, meta_batch="same"):
    config = dataclasses.replace(SMALL, meta=meta, assist="gated" if meta else "none")
    torch.manual_seed(0)
    task = build_task_net(config, 3, 3, 2)
    learner = build_meta_learner(config, 3, 3, 2)
    train = TrainConfig(lr=0.05, meta_lr=0.05, meta_batch=meta_batch)
    module = MkcnetTraining(task, learner, train, slice_length=2)
    return module


class _Optimizer:
    """What ``LightningModule.optimizers()`` hands out: an object with ``.optimizer``, ``.step``, ``.zero_grad``."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def zero_grad(self):
        self.optimizer.zero_grad()

    def step(self):
        self.optimizer.step()


def _batch(passes):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 48, 48, generator=g)
    return images, torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 1, 0]), torch.zeros(4), torch.full((4,), passes)


def _wire(module, monkeypatch):
    optimizers = [_Optimizer(o) for o in module.configure_optimizers()]
    monkeypatch.setattr(module, "optimizers", lambda: optimizers)
    monkeypatch.setattr(module, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    return optimizers


def test_stage_one_moves_only_the_task_net(monkeypatch):
    module = _tiny_module()
    _wire(module, monkeypatch)
    task0, meta0 = copy.deepcopy(module.task.state_dict()), copy.deepcopy(module.meta.state_dict())
    module.training_step(_batch(0), 0)
    assert any(not torch.equal(v, module.task.state_dict()[k]) for k, v in task0.items())
    meta_params = dict(module.meta.named_parameters())
    assert all(torch.equal(v, module.meta.state_dict()[k]) for k, v in meta0.items() if k in meta_params)
    assert all(p.grad is None for p in module.meta.parameters())  # targets were detached


@pytest.mark.parametrize("meta_batch", ["same", "split"])
def test_stage_two_moves_only_the_meta_learner_and_matches_its_losses(monkeypatch, meta_batch):
    module = _tiny_module(meta_batch=meta_batch)
    _wire(module, monkeypatch)
    task0, meta0 = copy.deepcopy(module.task.state_dict()), copy.deepcopy(module.meta.state_dict())
    images, d, q, _, _ = batch = _batch(1)
    inner_rows = slice(0, 2) if meta_batch == "split" else slice(None)
    outer_rows = slice(2, 4) if meta_batch == "split" else slice(None)
    loss = module.training_step(batch, 0)
    assert all(torch.equal(v, module.task.state_dict()[k]) for k, v in task0.items())  # θ and BN buffers
    assert any(not torch.equal(v, module.meta.state_dict()[k]) for k, v in meta0.items())
    assert module._meta_step.current_inner_lr() == pytest.approx(0.05)  # α follows the Task Net's lr
    # L_outer at θ̃: recompute θ̃ by hand from the losses the spec names, with the meta learner as it was
    probe = _tiny_module()
    probe.task.load_state_dict(task0)
    probe.meta.load_state_dict(meta0)
    xi, di, qi = images[inner_rows], d[inner_rows], q[inner_rows]
    target = probe.meta(xi, di, qi)
    out = probe.task(xi)
    inner = focal_loss(out.diagnosis, di) + focal_loss(out.quality, qi) + focal_loss(out.co_embedding, target) / 2
    names = [n for n, p in probe.task.named_parameters()]
    params = list(probe.task.parameters())
    grads = torch.autograd.grad(inner, params, allow_unused=True)
    tilde = {
        n: p - 0.05 * ((g if g is not None else 0) + 5e-4 * p) for n, p, g in zip(names, params, grads, strict=True)
    }
    buffers = {n: b.clone() for n, b in dict(probe.task.named_buffers()).items()}
    xo, do, qo = images[outer_rows], d[outer_rows], q[outer_rows]
    out2 = torch.func.functional_call(probe.task, {**tilde, **buffers}, (xo,))
    outer = focal_loss(out2.diagnosis, do) + focal_loss(out2.quality, qo) - 0.2 * batch_entropy(target)
    assert float(loss) == pytest.approx(float(outer), rel=1e-4)


def test_mode_settings_are_checked_when_the_config_is_built():
    with pytest.raises(ValueError, match=r"config.train.meta_batch must be one of \['same', 'split'\], got 'other'"):
        mkcnet_config("smoke", overrides=["train.meta_batch=other"])
    with pytest.raises(ValueError, match="batch_size >= 4"):
        mkcnet_config("smoke", overrides=["train.meta_batch=split", "train.batch_size=2"])
    with pytest.raises(ValueError, match="model.mask_by must be one of"):
        mkcnet_config("smoke", overrides=["model.mask_by=patient"])
    with pytest.raises(ValueError, match="needs model.meta=true"):
        mkcnet_config("smoke", overrides=["model.meta=false"])
    assert mkcnet_config("smoke", overrides=["model.meta=false", "model.assist=none"]).model.meta is False
    with pytest.raises(ValueError, match="data.mean and data.std need 3 values each"):
        mkcnet_config("smoke", overrides=["data.mean=[0.5]", "data.std=[0.2]"])
    with pytest.raises(ValueError, match=r"config.train.batch_size must be >= 2, got 1"):
        mkcnet_config("smoke", overrides=["train.batch_size=1"])  # BatchNorm needs two images
    with pytest.raises(ValueError, match=r"config.data.val_fraction must be in \[0, 1\), got 1.0"):
        mkcnet_config("smoke", overrides=["data.val_fraction=1.0"])


def test_variants_without_meta_train_in_one_pass(monkeypatch):
    module = _tiny_module(meta=False)
    optimizers = module.configure_optimizers()
    assert isinstance(optimizers, torch.optim.SGD)
    monkeypatch.setattr(module, "optimizers", lambda: _Optimizer(optimizers))
    monkeypatch.setattr(module, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    loss = module.training_step(_batch(0), 0)
    assert loss.ndim == 0 and set(module._sums) == {"loss", "loss_diagnosis", "loss_quality"}


def test_ct_iqad_splits_load_grey_binary_images(tmp_path):
    config = dataclasses.replace(mkcnet_config("smoke", dataset="ct-iqad").data, data_dir=str(tmp_path))
    ct_tree(tmp_path)
    train, val, test, *_ = load_splits(config, tmp_path)
    assert len(train) + len(val) + len(test) == 24
    assert train.images.shape[1:] == (1, 48, 48) and train.images.dtype == torch.uint8
    assert mkcnet_sizes(train) == (2, 2) and train.modality == "ct"
    codes = train.codes[MKCNET_QUALITY]
    assert set(codes.tolist()) <= {0, 1}
    assert torch.equal(codes, 1 - train.quality)  # CT-IQAD: MKCNet IQ 1 = HQ
    mean, std = normalisation(config, train)
    assert mean == DATASETS["ct-iqad"].mean
    item = MkcnetDataset(train, mean, std)[len(train) + 1]
    assert item[0].shape == (1, 48, 48) and item[4] == 1  # second-pass index


def test_missing_sources_and_statistics_from_training_images(tmp_path):
    config = dataclasses.replace(mkcnet_config("smoke", dataset="cxr-iqad").data, data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="kermany"):
        load_splits(config, tmp_path)
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    data = ImageTable(
        images, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long), ("Good", "Usable", "Reject")
    )
    mean, std = normalisation(mkcnet_config("smoke").data, data)
    pixels = images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(pixels.mean(1).tolist()) and std == pytest.approx(pixels.std(1).tolist())


def test_ablation_declares_the_components_then_the_lq_sweep():
    names = list(ABLATIONS)
    assert names[: len(COMPONENTS)] == COMPONENTS and COMPONENTS[-1] == "mkcnet"
    sweep = [f"{b}@lq{round(100 * f)}" for f in LQ_SWEEP if f < 1 for b in SWEEP_BASES]
    assert names[len(COMPONENTS) :] == sweep
    assert "mkcnet@lq25" in names and "vanilla@lq0" in names and "mkcnet@lq100" not in names
    config = variant_config(mkcnet_config("smoke"), ABLATIONS, "vanilla@lq50", seed=4)
    assert config.seed == 4 and config.data.train_lq_fraction == 0.5 and not config.model.meta
    assert config.model == variant_config(mkcnet_config("smoke"), ABLATIONS, "vanilla", seed=4).model
    for name in names:  # every variant is a valid config
        MKCNET.check(variant_config(mkcnet_config("smoke"), ABLATIONS, name, seed=0))
    with pytest.raises(ValueError, match="unknown ablation variant"):
        variant_config(mkcnet_config("smoke"), ABLATIONS, "mkcnet@lqx", 0)
    cell = {"auc": [0.5, 0.7], "accuracy": [0.4, 0.4], "macro_f1": [0.3, 0.5]}
    results = {"vanilla": {"overall": cell, "low_quality": cell}, "mkcnet@lq0": {"overall": cell, "low_quality": cell}}
    table = ablation_table(MKCNET, mkcnet_config("smoke"), results, ABLATIONS, [0, 1])
    assert "| Vanilla (backbone + diagnosis head) | 0.600 ± 0.141 |" in table
    assert "| MKCNet, 0% of the training LQ images | 0.600 ± 0.141 |" in table
    assert "0.838 / 0.780 / 0.597" in table  # the paper's EyeQ row, for reference
