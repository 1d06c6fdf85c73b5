"""The caption decoder: causality, padding invariance (tokens and context), errors, and it learns captions."""

import pytest
import torch

from qualcl.functional import mask_tokens
from qualcl.heads import CaptionDecoder
from qualcl.losses import CaptionLoss


def _decoder(mode="autoregressive", **kw):
    torch.manual_seed(0)
    args = dict(context_length=10, context_dim=6, mode=mode, pad_id=0)
    args.update(kw)
    return CaptionDecoder(30, 8, 2, 2, **args).double().eval()


IDS = torch.tensor([[1, 5, 9, 7, 2, 0, 0], [1, 8, 2, 0, 0, 0, 0], [1, 4, 4, 4, 4, 6, 2]])
CONTEXT = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("t", range(7))
def test_autoregressive_logits_at_t_ignore_later_tokens(t):
    decoder = _decoder()
    ids = IDS.clone()
    ids[:, 0] = 1
    out = decoder(ids, CONTEXT)
    later = ids.clone()
    later[:, t + 1 :] = torch.randint(3, 30, later[:, t + 1 :].shape, generator=torch.Generator().manual_seed(t))
    again = decoder(later, CONTEXT)
    torch.testing.assert_close(again[:, : t + 1], out[:, : t + 1])
    if t < 6:
        assert not torch.allclose(again[:, t + 1 :], out[:, t + 1 :])


def test_masked_mode_is_bidirectional():
    decoder = _decoder("masked")
    out = decoder(IDS, CONTEXT)
    later = IDS.clone()
    later[2, 5] = 11
    assert not torch.allclose(decoder(later, CONTEXT)[2, :5], out[2, :5])


@pytest.mark.parametrize("mode", ["autoregressive", "masked"])
def test_padding_never_influences_real_positions(mode):
    decoder = _decoder(mode)
    out = decoder(IDS, CONTEXT)
    real = IDS != 0
    trimmed = decoder(IDS[1:2, :3], CONTEXT[1:2])  # caption 1 without its padding
    torch.testing.assert_close(trimmed, out[1:2, :3])
    # the padding's outputs do not leak into the real positions' logits
    longer = torch.cat([IDS, torch.zeros(3, 3, dtype=IDS.dtype)], 1)
    torch.testing.assert_close(decoder(longer, CONTEXT)[:, :7][real], out[real])


@pytest.mark.parametrize("mode", ["autoregressive", "masked"])
def test_padded_context_is_ignored(mode):
    decoder = _decoder(mode)
    padding = torch.tensor([[False, False, True, True], [False] * 4, [False, True, True, True]])
    out = decoder(IDS, CONTEXT, context_padding_mask=padding)
    noisy = torch.where(padding[..., None], torch.randn_like(CONTEXT) * 50, CONTEXT)
    torch.testing.assert_close(decoder(IDS, noisy, context_padding_mask=padding), out)
    assert not torch.allclose(decoder(IDS, CONTEXT.flip(-1), context_padding_mask=padding), out)


def test_caption_decoder_errors_are_named():
    decoder = _decoder()
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=30\).*vocabulary do not match"):
        decoder(torch.tensor([[1, 31]]), CONTEXT[:1])
    with pytest.raises(ValueError, match="exceed context_length = 10"):
        decoder(torch.ones(1, 11, dtype=torch.long), CONTEXT[:1])
    with pytest.raises(ValueError, match="captions must not be empty"):
        decoder(torch.ones(1, 0, dtype=torch.long), CONTEXT[:1])
    with pytest.raises(ValueError, match=r"caption\(s\) \[1\] hold only padding"):
        decoder(torch.tensor([[1, 2], [0, 0]]), CONTEXT[:2])
    with pytest.raises(ValueError, match="starts with padding"):
        decoder(torch.tensor([[0, 2]]), CONTEXT[:1])
    with pytest.raises(ValueError, match=r"context must have shape \(N, L, 6\)"):
        decoder(IDS, CONTEXT[..., :4])
    with pytest.raises(ValueError, match="context must have N = 3 rows"):
        decoder(IDS, CONTEXT[:2])
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        decoder(IDS.double(), CONTEXT)
    with pytest.raises(ValueError, match="mode must be one of"):
        CaptionDecoder(30, 8, 1, 2, context_length=4, context_dim=6, mode="causal", pad_id=0)


@pytest.mark.parametrize("mode", ["autoregressive", "masked"])
def test_the_decoder_learns_image_dependent_captions(mode):
    """Two images, two captions: the decoder must read the context to tell which caption to produce."""
    torch.manual_seed(0)
    decoder = CaptionDecoder(12, 16, 1, 2, context_length=6, context_dim=4, mode=mode, pad_id=0)
    captions = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 7, 8, 9, 10, 2]]).repeat(4, 1)
    context = torch.eye(4)[:2, None, :].repeat(4, 3, 1)  # image 0 or image 1, three identical tokens
    loss_fn = CaptionLoss(pad_id=0)
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        if mode == "autoregressive":
            logits, labels = decoder(captions[:, :-1], context), captions[:, 1:]
        else:
            masked = mask_tokens(captions, mask_id=3, vocab_size=12, special_ids=[0, 1, 2, 3], ratio=0.5, generator=g)
            logits, labels = decoder(masked.ids, context), captions.masked_fill(~masked.selected, 0)
        loss = loss_fn(logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    decoder.eval()
    with torch.no_grad():
        if mode == "autoregressive":
            predicted = decoder(captions[:2, :-1], context[:2]).argmax(-1)
            assert torch.equal(predicted[captions[:2, 1:] != 0], captions[:2, 1:][captions[:2, 1:] != 0])
        else:
            all_masked = torch.where(torch.isin(captions[:2], torch.tensor([0, 1, 2])), captions[:2], 3)
            predicted = decoder(all_masked, context[:2]).argmax(-1)
            words = ~torch.isin(captions[:2], torch.tensor([0, 1, 2]))
            assert torch.equal(predicted[words], captions[:2][words])
