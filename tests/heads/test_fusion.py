"""Cross-attention fusion: the layer equations, padding invariance on both sides, one-way fusion, errors."""

import pytest
import torch

from qualcl.heads import CrossAttentionFusion

G = torch.Generator().manual_seed(0)
IMAGE = torch.randn(3, 5, 8, generator=G, dtype=torch.float64)
TEXT = torch.randn(3, 4, 8, generator=G, dtype=torch.float64)
IMAGE_PAD = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] + [True] * 4])
TEXT_PAD = torch.tensor([[False, False, True, True], [False] * 4, [False, False, False, True]])


def _fusion(**kw):
    torch.manual_seed(0)
    return CrossAttentionFusion(8, 2, **kw).double().eval()


def test_both_directions_read_the_layers_inputs():
    fusion = _fusion(depth=2)
    image, text = fusion(IMAGE, TEXT, image_padding_mask=IMAGE_PAD, text_padding_mask=TEXT_PAD)
    u, v = IMAGE, TEXT
    for image_block, text_block in zip(fusion.image_blocks, fusion.text_blocks, strict=True):
        u, v = (
            image_block(u, padding_mask=IMAGE_PAD, context=v, context_padding_mask=TEXT_PAD),
            text_block(v, padding_mask=TEXT_PAD, context=u, context_padding_mask=IMAGE_PAD),
        )
    torch.testing.assert_close(image, u)
    torch.testing.assert_close(text, v)
    assert not torch.allclose(image, IMAGE) and not torch.allclose(text, TEXT)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_padded_tokens_never_influence_any_output(bidirectional):
    fusion = _fusion(depth=2, bidirectional=bidirectional)
    image, text = fusion(IMAGE, TEXT, image_padding_mask=IMAGE_PAD, text_padding_mask=TEXT_PAD)
    noisy_image = torch.where(IMAGE_PAD[..., None], torch.randn_like(IMAGE) * 100, IMAGE)
    noisy_text = torch.where(TEXT_PAD[..., None], torch.randn_like(TEXT) * 100, TEXT)
    image2, text2 = fusion(noisy_image, noisy_text, image_padding_mask=IMAGE_PAD, text_padding_mask=TEXT_PAD)
    torch.testing.assert_close(image2[~IMAGE_PAD], image[~IMAGE_PAD])
    torch.testing.assert_close(text2[~TEXT_PAD], text[~TEXT_PAD])
    # padded positions are passed through unchanged
    torch.testing.assert_close(image2[IMAGE_PAD], noisy_image[IMAGE_PAD])
    torch.testing.assert_close(text2[TEXT_PAD], noisy_text[TEXT_PAD])
    # the same as running the unpadded sequences alone
    alone_image, alone_text = fusion(IMAGE[2:, :1], TEXT[2:, :3])
    torch.testing.assert_close(alone_image, image[2:, :1])
    torch.testing.assert_close(alone_text, text[2:, :3])


def test_one_way_fusion_returns_the_text_unchanged():
    fusion = _fusion(bidirectional=False)
    image, text = fusion(IMAGE, TEXT)
    assert text is TEXT and len(fusion.text_blocks) == 0
    assert not torch.allclose(image, IMAGE)
    changed_text = fusion(IMAGE, TEXT.flip(-1))[0]
    assert not torch.allclose(changed_text, image), "the image side reads the text"


def test_fusion_gradients():
    fusion = CrossAttentionFusion(4, 2, mlp_ratio=1.0).double()
    u = IMAGE[:2, :3, :4].clone().requires_grad_()
    v = TEXT[:2, :2, :4].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: sum(o.sum() for o in fusion(a, b)), (u, v))


def test_fusion_errors_are_named():
    fusion = _fusion()
    with pytest.raises(ValueError, match=r"text_tokens must have shape \(N, L, 8\)"):
        fusion(IMAGE, TEXT[..., :6])
    with pytest.raises(ValueError, match="the same N"):
        fusion(IMAGE, TEXT[:2])
    with pytest.raises(ValueError, match=r"text_padding_mask pads every token of row\(s\) \[1\]"):
        fusion(IMAGE, TEXT, text_padding_mask=torch.tensor([[False] * 4, [True] * 4, [False] * 4]))
    with pytest.raises(TypeError, match="image_padding_mask must be a bool tensor"):
        fusion(IMAGE, TEXT, image_padding_mask=IMAGE_PAD.long())
    with pytest.raises(ValueError, match=r"image_padding_mask must have shape \(N, L\) = \(3, 5\)"):
        fusion(IMAGE, TEXT, image_padding_mask=TEXT_PAD)
    with pytest.raises(ValueError, match=r"image_tokens contains \d+ non-finite"):
        fusion(IMAGE * float("nan"), TEXT)
