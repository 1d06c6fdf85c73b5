"""Hypothesis properties of the token heads over random shapes, padding and orders: padded tokens never matter,
fusion is equivariant to the order of tokens (it has no positions), and the MAE decoder only cares which patch a
visible token is, not where it sits in the sequence."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.functional import random_masking
from qualcl.heads import CaptionDecoder, CrossAttentionFusion, MAEDecoder

FEW = settings(max_examples=15, deadline=None)


def _padding(draw, n, length):
    """(n, length) bool, True = padded; every row keeps at least one real token, padding at the end."""
    real = draw(st.lists(st.integers(1, length), min_size=n, max_size=n))
    return torch.arange(length)[None] >= torch.tensor(real)[:, None]


@st.composite
def fusion_case(draw):
    n, li, lt = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    return n, li, lt, _padding(draw, n, li), _padding(draw, n, lt), draw(st.integers(0, 2**16)), draw(st.booleans())


@FEW
@given(case=fusion_case())
def test_fusion_ignores_padding_and_is_equivariant_to_token_order(case):
    n, li, lt, image_pad, text_pad, seed, bidirectional = case
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(8, 2, depth=2, bidirectional=bidirectional).double().eval()
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, li, 8, generator=g, dtype=torch.float64)
    text = torch.randn(n, lt, 8, generator=g, dtype=torch.float64)
    masks = dict(image_padding_mask=image_pad, text_padding_mask=text_pad)
    out_image, out_text = fusion(image, text, **masks)
    noisy_image = torch.where(image_pad[..., None], 100 * torch.randn_like(image), image)
    noisy_text = torch.where(text_pad[..., None], 100 * torch.randn_like(text), text)
    again_image, again_text = fusion(noisy_image, noisy_text, **masks)
    torch.testing.assert_close(again_image[~image_pad], out_image[~image_pad])
    torch.testing.assert_close(again_text[~text_pad], out_text[~text_pad])
    # shuffling the tokens (with their padding flags) shuffles the outputs the same way
    pi, pt = torch.randperm(li, generator=g), torch.randperm(lt, generator=g)
    shuffled = fusion(image[:, pi], text[:, pt], image_padding_mask=image_pad[:, pi], text_padding_mask=text_pad[:, pt])
    torch.testing.assert_close(shuffled[0], out_image[:, pi])
    torch.testing.assert_close(shuffled[1], out_text[:, pt])


@st.composite
def caption_case(draw):
    n, length, lc = draw(st.integers(1, 3)), draw(st.integers(2, 8)), draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(2, length), min_size=n, max_size=n))
    words = draw(st.lists(st.integers(3, 19), min_size=n * length, max_size=n * length))
    extra = draw(st.integers(1, 4))
    mode = draw(st.sampled_from(["autoregressive", "masked"]))
    return lengths, length, torch.tensor(words).view(n, length), _padding(draw, n, lc), extra, mode


@FEW
@given(case=caption_case())
def test_caption_logits_of_real_tokens_ignore_padding_and_padded_context(case):
    lengths, length, words, context_pad, extra, mode = case
    n = len(lengths)
    ids = torch.where(torch.arange(length)[None] < torch.tensor(lengths)[:, None], words, 0)
    ids[:, 0] = 1
    real = ids != 0
    torch.manual_seed(0)
    decoder = CaptionDecoder(20, 8, 2, 2, context_length=16, context_dim=6, mode=mode, pad_id=0).double().eval()
    context = torch.randn(n, context_pad.shape[1], 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = decoder(ids, context, context_padding_mask=context_pad)
    longer = torch.cat([ids, torch.zeros(n, extra, dtype=ids.dtype)], 1)
    noisy = torch.where(context_pad[..., None], 50 * torch.randn_like(context), context)
    again = decoder(longer, noisy, context_padding_mask=context_pad)[:, :length]
    torch.testing.assert_close(again[real], out[real])


@st.composite
def mae_case(draw):
    return (
        draw(st.integers(1, 3)),
        draw(st.sampled_from([0.25, 0.5, 0.75])),
        draw(st.integers(0, 2**16)),
        draw(st.integers(1, 4)),
    )


@FEW
@given(case=mae_case())
def test_mae_decoder_depends_on_which_patches_are_visible_not_their_order(case):
    n, ratio, seed, context_length = case
    torch.manual_seed(0)
    decoder = MAEDecoder(16, 4, 3, encoder_dim=12, decoder_dim=16, depth=1, num_heads=4, context_dim=6).double()
    decoder.eval()
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(n, 16, 12, generator=g, dtype=torch.float64)
    cls = torch.randn(n, 1, 12, generator=g, dtype=torch.float64)
    context = torch.randn(n, context_length, 6, generator=g, dtype=torch.float64)
    m = random_masking(full, ratio, generator=g)
    out = decoder(torch.cat([cls, m.visible], 1), m.ids_restore, context=context)
    perm = torch.randperm(m.ids_keep.shape[1], generator=g)
    removed = torch.argsort(m.mask, dim=1, stable=True)[:, m.ids_keep.shape[1] :]  # the removed patches, any order
    ids_restore = torch.argsort(torch.cat([m.ids_keep[:, perm], removed], 1), dim=1)
    again = decoder(torch.cat([cls, m.visible[:, perm]], 1), ids_restore, context=context)
    torch.testing.assert_close(again, out)
