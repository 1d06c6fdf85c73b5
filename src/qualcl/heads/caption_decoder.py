"""A caption decoder: token self-attention plus cross-attention to image tokens (CoCa's multimodal decoder)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qualcl._validation import check_choice, check_int, check_padding_mask, check_token_ids, check_tokens
from qualcl.heads._blocks import AttentionBlock

__all__ = ["CaptionDecoder"]


class CaptionDecoder(nn.Module):
    """Predict caption tokens from token ids and image (context) tokens.

    Token and learned position embeddings, then ``depth`` pre-norm blocks of self-attention over
    the tokens and cross-attention to the context tokens, a final norm and a linear layer to the
    vocabulary — the shape of CoCa's multimodal text decoder.

    * ``mode="autoregressive"`` (CoCa): causal self-attention, so the logits at position ``t``
      depend only on tokens ``≤ t``; train with ``logits = decoder(ids[:, :-1], ctx)`` against
      ``labels = ids[:, 1:]``.
    * ``mode="masked"`` (masked caption reconstruction, BERT-style): bidirectional
      self-attention; train on :func:`~qualcl.functional.mask_tokens`'s corrupted ids against the
      original ids at the selected positions.

    With ``pad_id``, tokens equal to it are padding: masked out as keys, and their own outputs
    never influence any other position (the logits at real positions do not depend on how much
    padding follows). Padding must not start a caption in autoregressive mode, and a caption of
    padding only is refused.

    Args:
        vocab_size: ``V``.
        width: Token width.
        depth: Number of blocks.
        num_heads: Attention heads.
        context_length: The longest caption ``T``.
        context_dim: Width of the image tokens.
        mode: ``"autoregressive"`` or ``"masked"``.
        pad_id: The padding id — the tokenizer's ``pad_id``, the one ``CaptionLoss(pad_id=...)``
            ignores (0 for :class:`~qualcl.models.CaptionTokenizer` and ``CaptionLoss``'s default) — or
            ``None`` for captions that are never padded. It has no default: without a pad id the
            decoder attends to padding as if it were words (in ``"masked"`` mode the logits at
            real positions then depend on how much padding follows) while ``CaptionLoss`` ignores
            the padded targets, a mismatch that must not happen by omission.
        mlp_ratio: MLP hidden width / ``width``.

    Shape:
        - ids: ``(N, T)`` integer, ``T <= context_length``; context: ``(N, Lc, context_dim)``.
        - context_padding_mask: ``(N, Lc)`` bool, ``True`` = padding.
        - Output: ``(N, T, V)`` logits.

    Examples:
        >>> import torch
        >>> from qualcl.heads import CaptionDecoder
        >>> decoder = CaptionDecoder(100, 32, 2, 4, context_length=12, context_dim=48, pad_id=0)
        >>> ids = torch.tensor([[1, 5, 9, 2, 0, 0], [1, 7, 2, 0, 0, 0]])
        >>> decoder(ids, torch.randn(2, 17, 48)).shape
        torch.Size([2, 6, 100])

    Reference:
        Yu et al., "CoCa: Contrastive Captioners are Image-Text Foundation Models", TMLR 2022;
        Devlin et al., "BERT", NAACL 2019 (``mode="masked"``).
    """

    def __init__(
        self,
        vocab_size: int,
        width: int,
        depth: int,
        num_heads: int,
        *,
        context_length: int,
        context_dim: int,
        mode: str = "autoregressive",
        pad_id: int | None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=2)
        self.width = check_int("width", width)
        self.context_length = check_int("context_length", context_length)
        self.context_dim = check_int("context_dim", context_dim)
        self.mode = check_choice("mode", mode, ("autoregressive", "masked"))
        self.pad_id = None if pad_id is None else check_int("pad_id", pad_id, minimum=0, maximum=self.vocab_size - 1)
        self.token_embedding = nn.Embedding(self.vocab_size, self.width)
        self.position_embedding = nn.Parameter(torch.zeros(self.context_length, self.width))
        self.blocks = nn.ModuleList(
            AttentionBlock(self.width, num_heads, context_dim=self.context_dim, mlp_ratio=mlp_ratio)
            for _ in range(check_int("depth", depth))
        )
        self.norm = nn.LayerNorm(self.width)
        self.head = nn.Linear(self.width, self.vocab_size)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"vocab_size={self.vocab_size}, mode={self.mode!r}, pad_id={self.pad_id}"

    def padding_mask(self, ids: Tensor) -> Tensor | None:
        """``(N, T)`` bool, ``True`` where ``ids`` is the pad id (``None`` without a pad id)."""
        return None if self.pad_id is None else ids == self.pad_id

    def forward(self, ids: Tensor, context: Tensor, *, context_padding_mask: Tensor | None = None) -> Tensor:
        """Logits for every position; see the class docstring for shapes."""
        check_token_ids(
            "ids", ids, self.vocab_size, context_length=self.context_length, owner="the decoder's vocabulary"
        )
        n, length = ids.shape
        check_tokens("context", context, self.context_dim)
        if context.shape[0] != n:
            raise ValueError(f"context must have N = {n} rows like ids, got {context.shape[0]}")
        check_padding_mask("context_padding_mask", context_padding_mask, context)
        padding = self.padding_mask(ids)
        if padding is not None and not torch.compiler.is_compiling():
            empty = padding.all(dim=1)
            if bool(empty.any()):
                rows = empty.nonzero().flatten()[:5].tolist()
                raise ValueError(f"caption(s) {rows} hold only padding: captions must not be empty")
            if self.mode == "autoregressive" and bool(padding[:, 0].any()):
                raise ValueError("a caption starts with padding: pad at the end in autoregressive mode")
        x = self.token_embedding(ids.long()) + self.position_embedding[:length]
        causal = self.mode == "autoregressive"
        for block in self.blocks:
            x = block(
                x, padding_mask=padding, causal=causal, context=context, context_padding_mask=context_padding_mask
            )
        logits: Tensor = self.head(self.norm(x))
        return logits
