"""The pre-norm transformer block the decoders and the fusion share, and its padding checks."""

from __future__ import annotations

import torch
from timm.layers.mlp import Mlp
from torch import Tensor, nn

__all__ = ["AttentionBlock", "check_padding_mask", "check_tokens"]


def check_tokens(name: str, x: object, dim: int | None = None) -> Tensor:
    """A finite floating ``(N, L, D)`` token tensor with ``L >= 1`` (``D == dim`` if given)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    want = "D" if dim is None else str(dim)
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[1] == 0 or (dim is not None and x.shape[2] != dim):
        raise ValueError(f"{name} must have shape (N, L, {want}) with N, L >= 1, got shape {tuple(x.shape)}")
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def check_padding_mask(name: str, mask: object, tokens: Tensor) -> Tensor | None:
    """A bool ``(N, L)`` mask (``True`` = padding) matching ``tokens``, with a real token in every row."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor (True = padding), got {got}")
    if tuple(mask.shape) != tuple(tokens.shape[:2]):
        raise ValueError(f"{name} must have shape (N, L) = {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")
    if not torch.compiler.is_compiling():
        empty = mask.all(dim=1)
        if bool(empty.any()):
            rows = empty.nonzero().flatten()[:5].tolist()
            raise ValueError(f"{name} pads every token of row(s) {rows}: each sequence needs one real token")
    return mask


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
