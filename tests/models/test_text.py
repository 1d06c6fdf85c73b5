"""The caption tokenizer (open_clip BPE, compact vocabulary) and the text encoder: round trips, padding, errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.tokenizer import SimpleTokenizer

from qualcl.data.synthetic.captions import make_caption
from qualcl.models import CaptionTokenizer, TextEncoder

CAPTIONS = [
    make_caption("left", 2, {"MA": [0, 0, 6, 0], "EX": [0, 0, 2, 0]}, 1, {"factors": {"blur": {"severity": "mild"}}}),
    make_caption("right", 0, {}, 0),
    make_caption("left", 4, {"MA": [3, 1, 0, 0], "NV": [1, 0, 0, 0]}, 2),
]


def test_tokenizer_uses_open_clips_bpe_and_round_trips():
    tok = CaptionTokenizer.fit(CAPTIONS)
    bpe = SimpleTokenizer()
    ids = tok.encode(CAPTIONS)
    assert ids.shape == (3, tok.context_length)
    for row, text in zip(ids, CAPTIONS, strict=True):
        words = row[1 : int((row == tok.end_id).nonzero()[0])]
        assert [tok.bpe_ids[i - 5] for i in words.tolist()] == bpe.encode(text)  # the same BPE tokens
        assert row[0] == tok.start_id
    assert tok.decode(ids) == [bpe.decode(bpe.encode(t)).strip() for t in CAPTIONS]
    assert tok.context_length == max(len(bpe.encode(t)) for t in CAPTIONS) + 2


def test_vocabulary_is_ordered_by_frequency_and_unknowns_map_to_unk():
    tok = CaptionTokenizer.fit(["a b b c c c"])
    bpe = SimpleTokenizer()
    assert tok.bpe_ids == [bpe.encode("c")[0], bpe.encode("b")[0], bpe.encode("a")[0]]
    ids = tok.encode(["c zebra a"])[0].tolist()
    assert ids[:5] == [1, 5, tok.unk_id, 7, 2]
    assert tok.decode([ids]) == ["c <unk> a"]
    assert CaptionTokenizer.fit(["a b b"], min_count=2).bpe_ids == [bpe.encode("b")[0]]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(CAPTIONS[0].split()), min_size=1, max_size=40), st.integers(3, 30))
def test_long_captions_are_cut_but_still_end(words, length):
    tok = CaptionTokenizer.fit(CAPTIONS, context_length=length)
    ids = tok.encode([" ".join(words)])[0]
    assert ids.shape == (length,) and ids[0] == tok.start_id
    assert int((ids == tok.end_id).sum()) == 1
    end = int((ids == tok.end_id).nonzero()[0])
    assert torch.all(ids[end + 1 :] == tok.pad_id) and torch.all(ids[1:end] >= 5)


def test_tokenizer_state_round_trips_and_errors_are_named():
    tok = CaptionTokenizer.fit(CAPTIONS, context_length=20)
    again = CaptionTokenizer.from_state_dict(tok.state_dict())
    assert torch.equal(again.encode(CAPTIONS), tok.encode(CAPTIONS))
    with pytest.raises(ValueError, match="captions must not be empty"):
        tok.encode(["left eye", "  "])
    with pytest.raises(ValueError, match="captions must not be empty"):
        CaptionTokenizer.fit(["", "x"])
    with pytest.raises(ValueError, match="non-empty sequence"):
        CaptionTokenizer.fit("a caption")
    with pytest.raises(ValueError, match="context_length must be"):
        CaptionTokenizer([1, 2], context_length=2)
    with pytest.raises(ValueError, match="must not repeat"):
        CaptionTokenizer([1, 1])


@pytest.mark.parametrize("causal", [True, False])
def test_text_encoder_ignores_padding(causal):
    torch.manual_seed(0)
    tok = CaptionTokenizer.fit(CAPTIONS)
    encoder = TextEncoder(tok.vocab_size, width=32, layers=2, heads=4, context_length=tok.context_length,
                          output_dim=16, causal=causal).eval()  # fmt: skip
    ids = tok.encode(CAPTIONS)
    pooled, tokens = encoder(ids)
    assert pooled.shape == (3, 16) and tokens.shape == (3, tok.context_length, 32)
    real = ids != tok.pad_id
    short = ids[1:2, : int(real[1].sum())]  # the second caption without its padding
    pooled_short, tokens_short = encoder(short)
    torch.testing.assert_close(pooled_short, pooled[1:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens_short, tokens[1:2, : short.shape[1]], rtol=1e-5, atol=1e-5)
    # the pooled embedding is the end token's: the words before it change it
    other = ids.clone()
    other[0, 1] = other[0, 2]
    assert not torch.allclose(encoder(other)[0][0], pooled[0])


def test_text_encoder_errors_are_named():
    encoder = TextEncoder(10, width=8, layers=1, heads=2, context_length=6, output_dim=4)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=10\).*do not match"):
        encoder(torch.tensor([[1, 12, 2]]))
    with pytest.raises(ValueError, match="exceed context_length = 6"):
        encoder(torch.tensor([[1, 5, 5, 5, 5, 5, 2]]))
    with pytest.raises(ValueError, match=r"caption\(s\) \[0\] have no end token"):
        encoder(torch.tensor([[1, 5, 5]]))
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        encoder(torch.zeros(1, 3))
