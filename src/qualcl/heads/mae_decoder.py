"""MAE's lightweight decoder: mask tokens, fixed sin-cos positions, per-patch pixels; optional cross-attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qualcl._validation import check_int, check_integer_tensor, check_padding_mask, check_positive, check_tokens
from qualcl.functional.patches import sincos_2d_position_embedding
from qualcl.heads._blocks import AttentionBlock

__all__ = ["MAEDecoder"]


def _check_permutation(ids: Tensor, length: int) -> None:
    """Refuse an ``(N, L)`` ``ids_restore`` whose rows are not permutations of ``0 … L − 1``."""
    expected = torch.arange(length, device=ids.device)
    broken = (torch.sort(ids, dim=1).values != expected).any(dim=1)
    if bool(broken.any()):
        row = int(broken.nonzero()[0])
        values = ids[row]
        counts = torch.bincount(values.clamp(0, length - 1), minlength=length)
        outside = values[(values < 0) | (values >= length)].tolist()
        detail = (
            f"values outside [0, {length}): {outside[:5]}"
            if outside
            else f"repeated {(counts > 1).nonzero().flatten().tolist()[:5]}, "
            f"missing {(counts == 0).nonzero().flatten().tolist()[:5]}"
        )
        raise ValueError(f"ids_restore must be a permutation of 0 … {length - 1} per row; row {row} is not ({detail})")


def _check_mask(mask: Tensor, ids: Tensor, n: int, length: int, visible: int) -> None:
    """Check ``mask`` (1 = removed) against ``ids_restore`` and the ``visible`` tokens given."""
    if not isinstance(mask, Tensor) or tuple(mask.shape) != (n, length):
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must have shape (N, L) = ({n}, {length}), got {got}")
    if mask.is_complex() or bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("mask must hold 1 (removed) and 0 (kept) only")
    kept = (mask == 0).sum(dim=1)
    if bool((kept != visible).any()):
        counts = sorted(set(kept.tolist()))
        if counts == [visible + 1]:
            raise ValueError(
                f"tokens must hold the class token first and then the {visible + 1} kept tokens of mask, "
                f"got {visible + 1} tokens: is the class token missing?"
            )
        raise ValueError(
            f"tokens must hold the class token and the kept tokens of mask ({counts} per row), got 1 + {visible}"
        )
    if bool(((ids < visible) != (mask == 0)).any()):
        raise ValueError("mask and ids_restore disagree: the kept patches must be those ids_restore puts first")


class MAEDecoder(nn.Module):
    """The masked autoencoder's decoder: fill in mask tokens, unshuffle, predict every patch's pixels.

    The encoder's tokens (class token first, then the ``V`` visible patches in ``ids_keep`` order)
    are projected to ``decoder_dim``; ``L − V`` copies of a learned mask token are appended and
    the sequence is put back into patch order with ``ids_restore``; fixed 2-D sin-cos position
    embeddings are added (the class position gets zeros) and ``depth`` pre-norm transformer blocks
    run; a linear layer predicts ``p·p·C`` pixel values per patch in :func:`~qualcl.functional.patchify`'s
    layout, and the class token is dropped.

    With ``context_dim``, every block also cross-attends to context tokens (e.g. the text tokens
    of an image–text model: the image side of a cross-modal fusion).

    Args:
        num_patches: ``L``, the patches of a full image (a square grid).
        patch_size: ``p``.
        in_chans: ``C`` of the reconstructed images.
        encoder_dim: Width of the encoder's tokens.
        decoder_dim: Width of the decoder (MAE: 512).
        depth: Number of blocks (MAE: 8).
        num_heads: Attention heads (MAE: 16).
        context_dim: Width of the context tokens to cross-attend to; ``None``: no cross-attention.
        mlp_ratio: MLP hidden width / ``decoder_dim``.
        norm_eps: ``eps`` of every LayerNorm (the blocks' and the final one). The default is
            PyTorch's 1e-5; MAE's models use 1e-6 (``partial(nn.LayerNorm, eps=1e-6)``), so pass
            ``norm_eps=1e-6`` for MAE's decoder. The outputs agree only as far as the token
            variances are large against both ``eps``.

    Shape:
        - tokens: ``(N, 1 + V, encoder_dim)``, the class token first; ids_restore: ``(N, L)``, a
          permutation of ``0 … L − 1`` per row.
        - mask (optional): ``(N, L)``, 1 = removed, 0 = kept (:func:`~qualcl.functional.random_masking`'s
          ``mask``). With it the decoder checks that ``tokens`` holds the class token and exactly the
          ``V`` kept tokens (without it a missing class token cannot be told from one visible token
          fewer) and that ``mask`` and ``ids_restore`` describe the same masking.
        - context: ``(N, Lc, context_dim)``; context_padding_mask: ``(N, Lc)`` bool, ``True`` = padding.
        - Output: ``(N, L, p·p·C)``.

    Examples:
        >>> import torch
        >>> from qualcl.functional import random_masking
        >>> from qualcl.heads import MAEDecoder
        >>> decoder = MAEDecoder(16, 16, encoder_dim=32, decoder_dim=32, depth=1, num_heads=4)
        >>> masking = random_masking(torch.randn(2, 16, 32), 0.75)
        >>> tokens = torch.cat([torch.randn(2, 1, 32), masking.visible], dim=1)  # class token first
        >>> decoder(tokens, masking.ids_restore).shape
        torch.Size([2, 16, 768])

    Reference:
        He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (``models_mae.py``).
    """

    pos_embed: Tensor

    def __init__(
        self,
        num_patches: int,
        patch_size: int,
        in_chans: int = 3,
        *,
        encoder_dim: int = 768,
        decoder_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        context_dim: int | None = None,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_patches = check_int("num_patches", num_patches)
        side = math.isqrt(self.num_patches)
        if side * side != self.num_patches:
            raise ValueError(f"num_patches must form a square grid, got {num_patches}")
        self.patch_size = check_int("patch_size", patch_size)
        self.in_chans = check_int("in_chans", in_chans)
        self.encoder_dim = check_int("encoder_dim", encoder_dim)
        dim = check_int("decoder_dim", decoder_dim)
        self.context_dim = None if context_dim is None else check_int("context_dim", context_dim)
        self.embed = nn.Linear(self.encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer(
            "pos_embed", sincos_2d_position_embedding(dim, side, class_token=True).unsqueeze(0), persistent=False
        )
        self.blocks = nn.ModuleList(
            AttentionBlock(dim, num_heads, context_dim=self.context_dim, mlp_ratio=mlp_ratio)
            for _ in range(check_int("depth", depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, self.patch_size**2 * self.in_chans)
        self.norm_eps = check_positive("norm_eps", norm_eps)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = self.norm_eps
        nn.init.normal_(self.mask_token, std=0.02)
        for layer in (self.embed, self.pred):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"num_patches={self.num_patches}, patch_size={self.patch_size}, in_chans={self.in_chans}"

    def forward(
        self,
        tokens: Tensor,
        ids_restore: Tensor,
        *,
        mask: Tensor | None = None,
        context: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Predict every patch; see the class docstring for shapes."""
        check_tokens("tokens", tokens, self.encoder_dim)
        n, visible = tokens.shape[0], tokens.shape[1] - 1
        length = self.num_patches
        ids = check_integer_tensor("ids_restore", ids_restore, what="patch indices")
        if tuple(ids.shape) != (n, length):
            raise ValueError(f"ids_restore must have shape (N, L) = ({n}, {length}), got {tuple(ids.shape)}")
        if not 1 <= visible <= length:
            raise ValueError(f"tokens must hold the class token and 1 … L = {length} visible tokens, got {visible}")
        if not torch.compiler.is_compiling():
            _check_permutation(ids, length)
            if mask is not None:
                _check_mask(mask, ids, n, length, visible)
        if self.context_dim is not None:
            if context is None:
                raise ValueError(f"this decoder cross-attends: pass context (N, Lc, {self.context_dim})")
            check_tokens("context", context, self.context_dim)
            if context.shape[0] != n:
                raise ValueError(f"context must have N = {n} rows like tokens, got {context.shape[0]}")
            check_padding_mask("context_padding_mask", context_padding_mask, context)
        elif context is not None:
            raise ValueError("this decoder has no cross-attention (context_dim=None) but got context")
        x = self.embed(tokens)
        masks = self.mask_token.to(x.dtype).expand(n, length - visible, -1)
        patches = torch.cat([x[:, 1:], masks], dim=1)
        patches = torch.gather(patches, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x, context=context, context_padding_mask=context_padding_mask)
        out: Tensor = self.pred(self.norm(x))[:, 1:]
        return out
