"""Issue 28: MAEDecoder refuses non-permutation ids_restore and tokens without the class token; MAE's forms."""

import pytest
import torch
from torch import nn

from qualcl.functional import kept_tokens, random_masking
from qualcl.heads import MAEDecoder


def _setup(seed=0):
    torch.manual_seed(seed)
    decoder = MAEDecoder(16, 4, 3, encoder_dim=8, decoder_dim=8, depth=1, num_heads=2).eval()
    masking = random_masking(torch.randn(2, 16, 8), 0.75, generator=torch.Generator().manual_seed(seed))
    cls = torch.randn(2, 1, 8)
    return decoder, masking, torch.cat([cls, masking.visible], 1)


def test_ids_restore_that_is_not_a_permutation_is_refused():
    decoder, masking, tokens = _setup()
    repeated = masking.ids_restore.clone()
    repeated[1, 0] = repeated[1, 1]  # in range, but one patch twice and one never
    with pytest.raises(ValueError, match=r"ids_restore must be a permutation of 0 … 15 per row; row 1 .*repeated"):
        decoder(tokens, repeated)
    outside = masking.ids_restore.clone()
    outside[0, 3] = 16
    with pytest.raises(ValueError, match=r"row 0 is not \(values outside \[0, 16\): \[16\]\)"):
        decoder(tokens, outside)
    assert decoder(tokens, masking.ids_restore).shape == (2, 16, 48)


def test_tokens_without_the_class_token_are_refused_given_the_mask():
    decoder, masking, tokens = _setup()
    with pytest.raises(ValueError, match=r"tokens must hold the class token first.*class token missing"):
        decoder(masking.visible, masking.ids_restore, mask=masking.mask)
    with pytest.raises(ValueError, match=r"tokens must hold the class token and the kept tokens of mask"):
        decoder(tokens[:, :3], masking.ids_restore, mask=masking.mask)
    with pytest.raises(ValueError, match="mask and ids_restore disagree"):
        decoder(tokens, masking.ids_restore, mask=masking.mask.flip(1))
    with pytest.raises(ValueError, match=r"mask must have shape \(N, L\) = \(2, 16\)"):
        decoder(tokens, masking.ids_restore, mask=masking.mask[:, :4])
    with pytest.raises(ValueError, match="mask must hold 1"):
        decoder(tokens, masking.ids_restore, mask=masking.mask * 2)
    out = decoder(tokens, masking.ids_restore, mask=masking.mask)
    assert torch.equal(out, decoder(tokens, masking.ids_restore))


def test_mae_layer_norm_eps_is_an_option():
    torch.manual_seed(0)
    default = MAEDecoder(16, 4, 3, encoder_dim=8, decoder_dim=8, depth=2, num_heads=2)
    torch.manual_seed(0)
    mae = MAEDecoder(16, 4, 3, encoder_dim=8, decoder_dim=8, depth=2, num_heads=2, norm_eps=1e-6)
    norms = [m for m in mae.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and all(m.eps == 1e-6 for m in norms)
    assert all(m.eps == 1e-5 for m in default.modules() if isinstance(m, nn.LayerNorm))
    with pytest.raises(ValueError, match="norm_eps must be"):
        MAEDecoder(16, 4, 3, encoder_dim=8, decoder_dim=8, depth=1, num_heads=2, norm_eps=0.0)


def test_mae_kept_token_count_is_an_option():
    # MAE: len_keep = int(L * (1 - mask_ratio))
    for length, ratio in [(196, 0.75), (100, 0.9), (10, 0.25), (49, 0.5), (16, 0.3)]:
        assert kept_tokens(length, ratio, rounding="floor") == int(length * (1 - ratio))
        assert kept_tokens(length, ratio) == round(length * (1 - ratio))
    assert kept_tokens(100, 0.9) == 10 and kept_tokens(100, 0.9, rounding="floor") == 9
    noise_seed = torch.Generator().manual_seed(3)
    out = random_masking(torch.randn(2, 10, 4), 0.25, generator=noise_seed, rounding="floor")
    assert out.visible.shape[1] == 7 and out.mask.sum(1).tolist() == [3.0, 3.0]  # round would keep 8
    with pytest.raises(ValueError, match="rounding must be one of"):
        kept_tokens(10, 0.5, rounding="ceil")
