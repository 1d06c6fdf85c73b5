"""Issue 28: CaptionTokenizer refuses non-str captions and foreign ids; CaptionDecoder's pad id is never implicit."""

import pytest
import torch

from qualcl.heads import CaptionDecoder
from qualcl.models import CaptionTokenizer

CAPTIONS = ["left eye, no lesions", "right eye, moderate lesions"]


@pytest.fixture(scope="module")
def tok():
    return CaptionTokenizer.fit(CAPTIONS, context_length=10)


@pytest.mark.parametrize(
    ("texts", "pattern"),
    [
        (None, r"texts must be a str or a sequence of str, got NoneType"),
        (b"left eye", r"texts must be a str or a sequence of str, got bytes"),
        (3, r"texts must be a str or a sequence of str, got int"),
        (["left eye", None], r"texts\[1\] must be a str, got NoneType"),
        ([b"left eye"], r"texts\[0\] must be a str, got bytes"),
        ([7], r"texts\[0\] must be a str, got int"),
    ],
)
def test_encode_refuses_what_is_not_text(tok, texts, pattern):
    with pytest.raises(TypeError, match=pattern):
        tok.encode(texts)


def test_fit_and_tokens_refuse_what_is_not_text(tok):
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got NoneType"):
        CaptionTokenizer.fit(["left eye", None])
    with pytest.raises(TypeError, match=r"text must be a str, got int"):
        tok.tokens(5)
    assert tok.encode("left eye").shape == (1, 10) and tok.encode(("left eye",)).shape == (1, 10)


def test_decode_refuses_ids_outside_the_vocabulary(tok):
    ids = tok.encode(CAPTIONS)
    assert tok.decode(ids) == ["left eye , no lesions", "right eye , moderate lesions"]
    for bad in (tok.vocab_size, 100, -1):
        wrong = ids.clone()
        wrong[1, 2] = bad
        with pytest.raises(
            ValueError, match=rf"ids must lie in \[0, vocab_size = {tok.vocab_size}\).*\[{bad}\] in row 1"
        ):
            tok.decode(wrong)
        with pytest.raises(ValueError, match="ids must lie in"):
            tok.decode(wrong.tolist())
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        tok.decode(ids.float())
    with pytest.raises(TypeError, match=r"ids\[0\] must hold integers, got float"):
        tok.decode([[1, 5.0, 2]])
    with pytest.raises(ValueError, match=r"ids must have shape \(N, T\)"):
        tok.decode(ids[0])


def test_caption_decoder_has_no_implicit_pad_id(tok):
    with pytest.raises(TypeError, match="pad_id"):
        CaptionDecoder(tok.vocab_size, 8, 1, 2, context_length=10, context_dim=4)  # type: ignore[call-arg]
    explicit = CaptionDecoder(tok.vocab_size, 8, 1, 2, context_length=10, context_dim=4, pad_id=tok.pad_id)
    assert explicit.pad_id == tok.pad_id == 0
    unpadded = CaptionDecoder(tok.vocab_size, 8, 1, 2, context_length=10, context_dim=4, pad_id=None)
    assert unpadded.padding_mask(torch.zeros(1, 3, dtype=torch.long)) is None
