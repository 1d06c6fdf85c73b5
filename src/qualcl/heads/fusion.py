"""Cross-attention fusion of image and text tokens (the multimodal fundus paper's Eq. 7; M3AE, ALBEF)."""

from __future__ import annotations

from torch import Tensor, nn

from qualcl._validation import check_int, check_padding_mask, check_tokens
from qualcl.heads._blocks import AttentionBlock

__all__ = ["CrossAttentionFusion"]


class CrossAttentionFusion(nn.Module):
    r"""Image tokens attend to text tokens and, if bidirectional, text tokens to image tokens.

    Each of the ``depth`` layers runs, from the layer's inputs ``(u, v)`` (image, text),

    .. math::
        u' = u + \mathrm{CA}_{img}(\mathrm{LN}(u), \mathrm{LN}(v)), \quad u'' = u' + \mathrm{MLP}(\mathrm{LN}(u'))

    and symmetrically ``v'' `` from ``CA_txt(LN(v), LN(u))`` — both directions read the same
    inputs, so the order of the two updates does not matter. With ``bidirectional=False`` only
    the image side is updated and the text tokens are returned unchanged.

    Padded tokens are masked out as keys and left unchanged as queries, so no padded token ever
    influences an output (only the non-padded positions of the outputs are meaningful).

    Args:
        dim: Token width ``D`` of both modalities (project them to a common width first).
        num_heads: Attention heads.
        depth: Number of fusion layers.
        bidirectional: Whether the text side attends to the image side too.
        mlp_ratio: MLP hidden width / ``dim``.

    Shape:
        - image_tokens: ``(N, Li, D)``; text_tokens: ``(N, Lt, D)``.
        - image_padding_mask / text_padding_mask: ``(N, Li)`` / ``(N, Lt)`` bool, ``True`` = padding.
        - Output: ``(image_fused (N, Li, D), text_fused (N, Lt, D))``.

    Examples:
        >>> import torch
        >>> from qualcl.heads import CrossAttentionFusion
        >>> fusion = CrossAttentionFusion(32, num_heads=4)
        >>> text = torch.randn(2, 6, 32)
        >>> padding = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
        >>> image, text = fusion(torch.randn(2, 17, 32), text, text_padding_mask=padding)
        >>> image.shape, text.shape
        (torch.Size([2, 17, 32]), torch.Size([2, 6, 32]))

    Reference:
        Nguyen et al., "Self-Supervised Multi-Modal Learning for Fundus Image Analysis Using Contrastive
        and Generative Learning" (Eq. 7); Chen et al., "Multi-modal Masked Autoencoders for Medical
        Vision-and-Language Pre-training" (M3AE), MICCAI 2022; Li et al., "Align before Fuse" (ALBEF),
        NeurIPS 2021.
    """

    def __init__(
        self, dim: int, num_heads: int, depth: int = 1, *, bidirectional: bool = True, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim)
        self.bidirectional = bool(bidirectional)
        layers = check_int("depth", depth)
        self.image_blocks = nn.ModuleList(
            AttentionBlock(self.dim, num_heads, self_attention=False, context_dim=self.dim, mlp_ratio=mlp_ratio)
            for _ in range(layers)
        )
        self.text_blocks = nn.ModuleList(
            AttentionBlock(self.dim, num_heads, self_attention=False, context_dim=self.dim, mlp_ratio=mlp_ratio)
            for _ in range(layers if self.bidirectional else 0)
        )

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"dim={self.dim}, depth={len(self.image_blocks)}, bidirectional={self.bidirectional}"

    def forward(
        self,
        image_tokens: Tensor,
        text_tokens: Tensor,
        *,
        image_padding_mask: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Fuse the two token sequences; see the class docstring for shapes."""
        check_tokens("image_tokens", image_tokens, self.dim)
        check_tokens("text_tokens", text_tokens, self.dim)
        if image_tokens.shape[0] != text_tokens.shape[0]:
            raise ValueError(
                f"image_tokens and text_tokens must have the same N, got {image_tokens.shape[0]} and "
                f"{text_tokens.shape[0]}"
            )
        check_padding_mask("image_padding_mask", image_padding_mask, image_tokens)
        check_padding_mask("text_padding_mask", text_padding_mask, text_tokens)
        image, text = image_tokens, text_tokens
        for i, image_block in enumerate(self.image_blocks):
            new_image = image_block(
                image, padding_mask=image_padding_mask, context=text, context_padding_mask=text_padding_mask
            )
            if self.bidirectional:
                text = self.text_blocks[i](
                    text, padding_mask=text_padding_mask, context=image, context_padding_mask=image_padding_mask
                )
            image = new_image
        return image, text
