"""MAE's lightweight decoder: mask tokens, fixed sin-cos positions, per-patch pixels; optional cross-attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qualcl._validation import check_int, check_integer_tensor, check_padding_mask, check_tokens
from qualcl.functional.patches import sincos_2d_position_embedding
from qualcl.heads._blocks import AttentionBlock

__all__ = ["MAEDecoder"]


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

    Shape:
        - tokens: ``(N, 1 + V, encoder_dim)``; ids_restore: ``(N, L)``.
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
        if not torch.compiler.is_compiling() and (int(ids.min()) < 0 or int(ids.max()) >= length):
            raise ValueError(f"ids_restore must be a permutation of 0 … {length - 1} per row")
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
