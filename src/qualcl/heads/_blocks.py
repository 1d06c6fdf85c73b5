"""The pre-norm transformer block the decoders and the fusion share."""

from __future__ import annotations

import torch
from timm.layers.mlp import Mlp
from torch import Tensor, nn

__all__ = ["AttentionBlock"]


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            for p in (m.in_proj_weight, m.q_proj_weight, m.k_proj_weight, m.v_proj_weight):
                if p is not None:
                    nn.init.xavier_uniform_(p)
            if m.in_proj_bias is not None:
                nn.init.zeros_(m.in_proj_bias)


class AttentionBlock(nn.Module):
    """Pre-norm residual block: optional self-attention, optional cross-attention, then an MLP.

    ``x ← x + SA(LN(x))`` (causal if asked), ``x ← x + CA(LN(x), LN_c(context))``,
    ``x ← x + MLP(LN(x))`` — the block of MAE's decoder (self-attention only), of CoCa's
    multimodal text decoder (both) and of a fusion layer (cross-attention only). Attention is
    ``nn.MultiheadAttention``; padded keys are masked out, and padded *query* positions are left
    unchanged, so padding never influences any output.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        self_attention: bool = True,
        context_dim: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.norm_self = nn.LayerNorm(dim) if self_attention else None
        self.self_attn = (
            nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True) if self_attention else None
        )
        if context_dim is not None:
            self.norm_query = nn.LayerNorm(dim)
            self.norm_context = nn.LayerNorm(context_dim)
            self.cross_attn = nn.MultiheadAttention(
                dim, num_heads, dropout=dropout, batch_first=True, kdim=context_dim, vdim=context_dim
            )
        else:
            self.norm_query = self.norm_context = None  # type: ignore[assignment]
            self.cross_attn = None  # type: ignore[assignment]
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=dropout)
        _xavier(self)

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        causal: bool = False,
        context: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``(N, L, dim)`` → ``(N, L, dim)``; masks are bool with ``True`` = padding (checked by the caller)."""
        keep = None if padding_mask is None else ~padding_mask.unsqueeze(-1)

        def update(x: Tensor, delta: Tensor) -> Tensor:
            return x + delta if keep is None else torch.where(keep, x + delta, x)

        if self.self_attn is not None and self.norm_self is not None:
            h = self.norm_self(x)
            attn_mask = None
            if causal:
                length = x.shape[1]
                attn_mask = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            delta, _ = self.self_attn(h, h, h, key_padding_mask=padding_mask, attn_mask=attn_mask, need_weights=False)
            x = update(x, delta)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block cross-attends: pass context (N, Lc, context_dim)")
            c = self.norm_context(context)
            delta, _ = self.cross_attn(
                self.norm_query(x), c, c, key_padding_mask=context_padding_mask, need_weights=False
            )
            x = update(x, delta)
        return update(x, self.mlp(self.norm_mlp(x)))
