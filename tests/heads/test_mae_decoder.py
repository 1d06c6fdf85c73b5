"""MAE's decoder: unshuffling, positions, cross-attention padding, errors, and a masked autoencoder that learns."""

import pytest
import torch

from qualcl.functional import patchify, random_masking, sincos_2d_position_embedding
from qualcl.heads import MAEDecoder
from qualcl.losses import MaskedReconstructionLoss
from qualcl.models import vit_encoder


def _decoder(**kw):
    torch.manual_seed(0)
    args = dict(encoder_dim=12, decoder_dim=16, depth=2, num_heads=4)
    args.update(kw)
    return MAEDecoder(16, 4, 3, **args).double().eval()


def _masked_tokens(seed, n=3, length=16, dim=12, ratio=0.75):
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(n, length, dim, generator=g, dtype=torch.float64)
    cls = torch.randn(n, 1, dim, generator=g, dtype=torch.float64)
    masking = random_masking(full, ratio, generator=g)
    return full, cls, masking


def test_decoder_equals_maes_forward_decoder():
    """The steps of ``MaskedAutoencoderViT.forward_decoder`` written out with the decoder's weights."""
    decoder = _decoder()
    _, cls, m = _masked_tokens(0)
    tokens = torch.cat([cls, m.visible], 1)
    x = decoder.embed(tokens)
    mask_tokens = decoder.mask_token.repeat(x.shape[0], m.ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, dim=1, index=m.ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1)
    x = x + sincos_2d_position_embedding(16, 4, class_token=True).double()
    for block in decoder.blocks:
        x = block(x)
    want = decoder.pred(decoder.norm(x))[:, 1:, :]
    torch.testing.assert_close(decoder(tokens, m.ids_restore), want)


def test_the_order_of_the_visible_tokens_does_not_matter():
    """Only which patch a visible token is matters: another shuffle of the same kept set gives the same output."""
    decoder = _decoder()
    _, cls, m = _masked_tokens(1)
    out = decoder(torch.cat([cls, m.visible], 1), m.ids_restore)
    perm = torch.randperm(m.ids_keep.shape[1], generator=torch.Generator().manual_seed(3))
    ids_keep = m.ids_keep[:, perm]
    masked = torch.stack([torch.tensor([i for i in range(16) if i not in set(r.tolist())]) for r in m.ids_keep])
    shuffle = torch.cat([ids_keep, masked], 1)
    ids_restore = torch.argsort(shuffle, dim=1)
    again = decoder(torch.cat([cls, m.visible[:, perm]], 1), ids_restore)
    torch.testing.assert_close(out, again)
    # and a visible token's content changes the output
    changed = m.visible.clone()
    changed[:, 0] += 1.0
    assert not torch.allclose(decoder(torch.cat([cls, changed], 1), m.ids_restore), out)


def test_positions_are_maes_fixed_sincos_and_not_trained():
    decoder = _decoder()
    torch.testing.assert_close(decoder.pos_embed[0].float(), sincos_2d_position_embedding(16, 4, class_token=True))
    assert "pos_embed" not in dict(decoder.named_parameters()) and "pos_embed" not in decoder.state_dict()


def test_cross_attention_ignores_padded_context():
    decoder = _decoder(context_dim=10)
    _, cls, m = _masked_tokens(2)
    tokens = torch.cat([cls, m.visible], 1)
    context = torch.randn(3, 5, 10, dtype=torch.float64)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] + [True] * 4])
    out = decoder(tokens, m.ids_restore, context=context, context_padding_mask=padding)
    noisy = torch.where(padding[..., None], torch.randn_like(context) * 100, context)
    torch.testing.assert_close(decoder(tokens, m.ids_restore, context=noisy, context_padding_mask=padding), out)
    shorter = decoder(tokens[1:2], m.ids_restore[1:2], context=context[1:2, :3])
    torch.testing.assert_close(shorter, out[1:2])
    assert not torch.allclose(
        decoder(tokens, m.ids_restore, context=context.flip(-1), context_padding_mask=padding), out
    )


def test_decoder_errors_are_named():
    decoder = _decoder()
    _, cls, m = _masked_tokens(3)
    tokens = torch.cat([cls, m.visible], 1)
    with pytest.raises(ValueError, match=r"tokens must have shape \(N, L, 12\)"):
        decoder(tokens[..., :8], m.ids_restore)
    with pytest.raises(ValueError, match=r"ids_restore must have shape \(N, L\) = \(3, 16\)"):
        decoder(tokens, m.ids_restore[:, :8])
    with pytest.raises(ValueError, match="permutation"):
        decoder(tokens, m.ids_restore + 16)
    with pytest.raises(ValueError, match="no cross-attention"):
        decoder(tokens, m.ids_restore, context=torch.zeros(3, 2, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="pass context"):
        _decoder(context_dim=8)(tokens, m.ids_restore)
    with pytest.raises(ValueError, match="num_patches must form a square grid"):
        MAEDecoder(12, 4)
    with pytest.raises(ValueError, match="1 … L = 16 visible tokens"):
        decoder(torch.cat([tokens] * 4, 1), m.ids_restore)


def test_a_tiny_masked_autoencoder_learns_to_reconstruct():
    """ViT encoder (masked forward) + decoder + masked-patch loss: a few steps on one batch cut the loss."""
    torch.manual_seed(0)
    encoder = vit_encoder("vit_tiny", image_size=32)
    decoder = MAEDecoder(encoder.num_patches, 16, 3, encoder_dim=192, decoder_dim=32, depth=1, num_heads=4)
    loss_fn = MaskedReconstructionLoss(norm_pix_loss=True)
    images = torch.randn(4, 3, 16, 16).repeat(1, 1, 2, 2)  # every patch of an image alike: predictable
    target = patchify(images, 16)
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimiser = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        m = random_masking(torch.zeros(4, encoder.num_patches, 1), 0.5, generator=g)
        pred = decoder(encoder.forward_masked(images, m.ids_keep), m.ids_restore)
        loss = loss_fn(pred, target, m.mask)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert decoder.mask_token.grad is not None and decoder.mask_token.grad.abs().sum() > 0
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
