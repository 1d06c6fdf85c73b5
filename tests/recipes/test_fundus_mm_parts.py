"""The image–text model's wiring: objectives per variant, gradients, and no leakage of what is predicted."""

import pytest
import torch

from qualcl.data.synthetic.captions import make_caption
from qualcl.losses.base import Loss
from qualcl.models import CaptionTokenizer
from qualcl.recipes.config import apply_overrides, config_from_dict
from qualcl.recipes.fundus_mm.config import ABLATIONS, FundusMMConfig, ModelConfig, TrainConfig
from qualcl.recipes.fundus_mm.model import FundusMMNet
from qualcl.recipes.fundus_mm.modules import ImageTextPretraining, build_objectives

CAPTIONS = [
    make_caption("left" if g % 2 else "right", g, {"MA": [g, 1, 0, 0], "EX": [0, g, 0, 0]} if g else {}, g % 3)
    for g in range(5)
] * 2
TOK = CaptionTokenizer.fit(CAPTIONS)
# vit_tiny: these tests reason about a 2 x 2 grid of 16-px patches at 32 px (the default convvit_tiny has 8-px ones)
SMALL = dict(encoder="vit_tiny", embed_dim=32, text_width=32, text_layers=1, fusion_dim=32, decoder_dim=32,
             decoder_depth=1, caption_width=32, caption_depth=1)  # fmt: skip


def _net(**overrides):
    torch.manual_seed(0)
    return FundusMMNet(ModelConfig(**{**SMALL, **overrides}), TOK, 32)


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(len(CAPTIONS), 3, 32, 32, generator=g), TOK.encode(CAPTIONS)


def _terms(net, images, ids, seed):
    """The network's forward and the terms of its objectives (built as the recipe builds them)."""
    objectives = build_objectives(net.config, TrainConfig(), pad_id=net.tokenizer.pad_id, gather=False)
    out = net(images, ids, generator=torch.Generator().manual_seed(seed))
    return out, objectives(out), objectives


@pytest.mark.parametrize("variant", list(ABLATIONS))
def test_each_variant_trains_what_it_names(variant):
    model = apply_overrides(FundusMMConfig(model=ModelConfig(**SMALL)), ABLATIONS[variant].overrides).model
    net = _net(**{k: getattr(model, k) for k in ("contrastive", "mim", "caption", "fusion")})
    images, ids = _batch()
    _, terms, objectives = _terms(net, images, ids, seed=1)
    want = {"contrastive"} if model.contrastive else set()
    want |= {"image"} if model.mim else set()
    want |= {"caption"} if model.caption != "none" else set()
    assert list(terms) == [k for k in ("contrastive", "image", "caption") if k in want]
    assert all(torch.isfinite(v) for v in terms.values())
    objectives.total(terms).backward()
    missing = {n.split(".")[0] for n, p in net.named_parameters() if p.grad is None}
    assert missing == ({"image_proj", "text"} if variant == "mae" else set())
    assert all(p.grad is not None for p in objectives.parameters())  # the learnt logit scale


def test_the_network_computes_representations_and_the_objectives_hold_the_losses():
    """The split of open_clip's CoCa: no loss inside the network; the learnt scales are the objectives'."""
    for loss in ("clip", "siglip"):
        net = _net(contrastive_loss=loss)
        assert not any(isinstance(m, Loss) for m in net.modules())
        objectives = build_objectives(net.config, TrainConfig(), pad_id=TOK.pad_id, gather=True)
        assert all(m.gather_distributed for m in objectives.modules() if isinstance(m, Loss))
        want = {"contrastive.log_logit_scale"} | ({"contrastive.logit_bias"} if loss == "siglip" else set())
        assert set(objectives.state_dict()) == want
        assert objectives.logit_scale == pytest.approx(1 / 0.07 if loss == "clip" else 10.0)
        if loss == "siglip":  # one positive per image: class-level labels are refused
            with pytest.raises(ValueError, match="class_level_positives"):
                objectives(net(*_batch()), torch.zeros(len(CAPTIONS), dtype=torch.long))
        module = ImageTextPretraining(net, TrainConfig(lr=1e-3), TOK.encode(CAPTIONS[:2])[None], class_level=False)
        module._total_steps = 10
        optimised = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
        assert {id(p) for p in module.objectives.parameters()} <= optimised
    assert build_objectives(ModelConfig(contrastive=False), TrainConfig(), pad_id=0, gather=False).logit_scale == (
        pytest.approx(1 / 0.07)
    )


def _caption_logits(net, images, ids, seed):
    captured = {}
    decoder_forward = net.caption_decoder.forward

    def spy_decoder(inputs, context, **kw):
        captured["inputs"] = inputs
        return decoder_forward(inputs, context, **kw)

    net.caption_decoder.forward = spy_decoder
    out = net(images, ids, generator=torch.Generator().manual_seed(seed))
    return out.caption_logits, out.caption_labels, captured["inputs"]


@pytest.mark.parametrize("fusion", [True, False])
def test_masked_words_never_reach_their_own_prediction(fusion):
    """Replacing the original word behind a mask token changes the label, never the logits.

    (BERT leaves 10 % of the selected words in place and replaces 10 % by random words; those are
    visible by design, so only the words hidden behind the mask token are changed here.)
    """
    net = _net(fusion=fusion, text_mask_ratio=0.5).eval()
    images, ids = _batch()
    logits, labels, inputs = _caption_logits(net, images, ids, seed=3)
    hidden = inputs == TOK.mask_id
    assert hidden.sum() > 5
    changed = torch.where(hidden, (ids + 1 - 5) % (TOK.vocab_size - 5) + 5, ids)  # other words behind the masks
    logits2, labels2, inputs2 = _caption_logits(net, images, changed, seed=3)
    assert torch.equal(inputs2, inputs)
    torch.testing.assert_close(logits2, logits)
    assert not torch.equal(labels2[hidden], labels[hidden])


def test_autoregressive_captions_only_see_the_past():
    net = _net(caption="autoregressive").eval()
    images, ids = _batch()
    logits, _, _ = _caption_logits(net, images, ids, seed=0)
    later = ids.clone()
    later[:, 6:] = torch.where(ids[:, 6:] >= 5, (ids[:, 6:] + 1 - 5) % (TOK.vocab_size - 5) + 5, ids[:, 6:])
    logits2, _, _ = _caption_logits(net, images, later, seed=0)
    torch.testing.assert_close(logits2[:, :6], logits[:, :6])  # logits at t < 6 predict tokens 1..6


@pytest.mark.parametrize("caption", ["masked", "autoregressive", "none"])
def test_removed_pixels_never_reach_their_reconstruction(caption):
    net = _net(caption=caption, mask_ratio=0.5).eval()
    images, ids = _batch()
    out, terms, _ = _terms(net, images, ids, seed=5)
    removed = out.mask[0].nonzero().flatten()[0].item()  # a removed patch of image 0 (2 × 2 grid of 16 px)
    row, col = divmod(removed, 2)
    other = images.clone()
    other[0, :, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16] = 0.5
    again, terms_again, _ = _terms(net, other, ids, seed=5)
    torch.testing.assert_close(again.pred, out.pred)
    assert terms_again["image"] != terms["image"]


def test_generate_greedy_captions():
    net = _net(caption="autoregressive").eval()
    images, _ = _batch()
    ids = net.generate(images[:3], max_tokens=8)
    assert ids.shape[0] == 3 and ids.shape[1] <= 8 and torch.all(ids[:, 0] == TOK.start_id)
    assert len(TOK.decode(ids)) == 3
    with pytest.raises(ValueError, match="autoregressive"):
        _net().generate(images[:1])


def test_config_errors_are_named():
    with pytest.raises(ValueError, match="at least one objective"):
        ModelConfig(contrastive=False, mim=False, caption="none")
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\), got 1.0"):
        config_from_dict(ModelConfig, {"mask_ratio": 1.0})
    with pytest.raises(ValueError, match="fusion_heads must divide"):
        ModelConfig(fusion_dim=30)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from tiny_models import write_tiny_bert

    return str(write_tiny_bert(tmp_path_factory.mktemp("tiny_bert")))


@pytest.mark.parametrize("caption", ["masked", "autoregressive"])
def test_the_pretrained_text_tower_trains_every_objective_and_hides_masked_words(bert, caption):
    tok = CaptionTokenizer.fit(CAPTIONS, base=bert)
    torch.manual_seed(0)
    config = ModelConfig(**{**SMALL, "text_tower": "pretrained", "text_model": bert, "caption": caption,
                            "text_mask_ratio": 0.5})  # fmt: skip
    net = FundusMMNet(config, tok, 32)
    assert net.text.width == 32 and net.text_tokens is not None and net.text_tokens.in_features == 32
    g = torch.Generator().manual_seed(0)
    images, ids = torch.rand(len(CAPTIONS), 3, 32, 32, generator=g), tok.encode(CAPTIONS)
    _, terms, _ = _terms(net, images, ids, seed=1)
    assert set(terms) == {"contrastive", "image", "caption"}
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in net.text.parameters())
    if caption == "masked":  # the bidirectional pretrained tower must not see the words behind the masks
        net.eval()
        logits, labels, inputs = _caption_logits(net, images, ids, seed=3)
        hidden = inputs == tok.mask_id
        assert hidden.sum() > 5
        changed = torch.where(hidden, (ids + 1 - 5) % (tok.vocab_size - 5) + 5, ids)
        logits2, labels2, _ = _caption_logits(net, images, changed, seed=3)
        torch.testing.assert_close(logits2, logits)
        assert not torch.equal(labels2[hidden], labels[hidden])


def test_the_pretrained_tower_learns_at_its_own_rate_and_frozen_weights_not_at_all(bert):
    tok = CaptionTokenizer.fit(CAPTIONS, base=bert)
    prompts = tok.encode(CAPTIONS[:5]).unsqueeze(1)
    for freeze in (False, True):
        config = ModelConfig(**{**SMALL, "text_tower": "pretrained", "text_model": bert, "text_freeze": freeze,
                                "text_lr_scale": 0.25})  # fmt: skip
        net = FundusMMNet(config, tok, 32)
        module = ImageTextPretraining(net, TrainConfig(lr=1e-3), prompts, class_level=True)
        module._total_steps = 10
        groups = module.configure_optimizers()["optimizer"].param_groups
        text = {id(p) for p in net.text.model.parameters()}
        rates = {id(p): g["initial_lr"] for g in groups for p in g["params"]}
        trainable = {id(p) for p in module.parameters() if p.requires_grad}  # the logit scale too
        assert set(rates) == trainable  # every trainable parameter once, nothing frozen
        assert bool(text & trainable) is not freeze
        for pid, rate in rates.items():
            assert rate == pytest.approx(2.5e-4 if pid in text else 1e-3)


def test_text_tower_config_errors_are_named():
    with pytest.raises(ValueError, match=r"text_tower must be one of \['scratch', 'pretrained'\]"):
        config_from_dict(ModelConfig, {"text_tower": "bert"})
    with pytest.raises(ValueError, match="set model.text_tower=pretrained"):
        ModelConfig(text_model="/some/folder")
    with pytest.raises(ValueError, match="text_lr_scale must be > 0"):
        config_from_dict(ModelConfig, {"text_lr_scale": 0.0})


def test_the_conv_stem_vit_keeps_removed_pixels_from_their_reconstruction():
    net = _net(encoder="convvit_tiny", mask_ratio=0.5).eval()
    assert net.image.patch_size == 8 and net.image.num_patches == 16
    images, ids = _batch()
    out, terms, _ = _terms(net, images, ids, seed=5)
    assert out.pred.shape == (len(CAPTIONS), 16, 8 * 8 * 3)
    removed = out.mask[0].nonzero().flatten()[0].item()  # a removed patch of image 0 (4 × 4 grid of 8 px)
    row, col = divmod(removed, 4)
    other = images.clone()
    other[0, :, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] = 0.5
    again, terms_again, _ = _terms(net, other, ids, seed=5)
    torch.testing.assert_close(again.pred, out.pred)
    assert terms_again["image"] != terms["image"]
