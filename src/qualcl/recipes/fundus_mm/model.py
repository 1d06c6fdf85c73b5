"""The image–text model: masked ViT + text transformer, cross-attention fusion, MAE and caption decoders.

The recipe wires qualcl's primitives; the maths lives in them. As open_clip splits ``CoCa`` (the model) from its loss,
:class:`FundusMMNet` computes representations only: embeddings, predicted patches and caption logits with their
targets (:class:`PretrainOutput`); the objectives that score them are built in one place
(:func:`qualcl.recipes.fundus_mm.modules.build_objectives`). One pre-training step, for images ``x`` and caption ids
``c``:

1. ``random_masking`` keeps ``round(L·(1 − r))`` patches; the ViT encodes only those (``ViTEncoder.forward_masked``) →
   tokens ``h_img`` (class token first).
2. ``z_img = proj(class token)`` of the whole image (``model.contrastive_view="full"``, CLIP) or of the masked pass
   (``"masked"``, FLIP); ``z_txt`` = the text transformer's end-token embedding of the full caption. ``L_con``
   (:class:`~qualcl.losses.ClipLoss` or :class:`~qualcl.losses.SigLipLoss`) scores the *un-fused* pooled embeddings
   (the fusion cannot leak the caption into the contrastive pair).
3. Masked captioning: ``mask_tokens`` corrupts 15 % of the words; the text transformer encodes the corrupted caption;
   :class:`~qualcl.heads.CrossAttentionFusion` fuses image and (corrupted) text tokens; the MAE decoder reconstructs
   the removed patches from the fused image tokens (``L_img``) and the caption decoder predicts the masked words from
   the corrupted ids while cross-attending to the fused tokens of both modalities (``L_cap``). Neither fused side has
   seen a masked word or a removed patch. Autoregressive captioning (CoCa): the caption decoder reads ``c[:, :-1]``
   and cross-attends to the *un-fused* image tokens (the fused ones have seen the whole caption); the fusion then only
   conditions the MAE decoder on the text.
4. ``L = w_con L_con + w_img L_img + w_cap L_cap``.

Under DDP (``gather_distributed``) the step equals one process on the concatenated batch: the network draws the masks
for the global batch (every rank draws the same noise from the step's generator and keeps its own rows), so each image
is masked as one process would mask it; the objectives contrast with every rank's pairs and average over every rank's
patches and words.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl.distributed import gather_no_grad, gather_with_grad
from qualcl.functional import MaskingResult, mask_tokens, patchify, random_masking
from qualcl.heads import CaptionDecoder, CrossAttentionFusion, MAEDecoder
from qualcl.models import CaptionTokenizer, PretrainedTextEncoder, TextEncoder, minilm_path
from qualcl.models.vit import vit_encoder
from qualcl.recipes.fundus_mm.config import ModelConfig

__all__ = ["FundusMMNet", "PretrainOutput", "per_process", "text_model_path"]


def text_model_path(config: ModelConfig) -> str:
    """The pretrained text tower's local folder: ``model.text_model`` or the MiniLM package's."""
    return str(minilm_path()) if config.text_model is None else config.text_model


@contextlib.contextmanager
def per_process(module: nn.Module) -> Iterator[None]:
    """Within it, ``module`` and its parts use this process's batch alone: no collective, this rank's own masks.

    Every submodule with a ``gather_distributed`` flag (the network's masking, the objectives) has
    it off inside the block. For passes that ranks do not run together — validation (ranks may hold
    different numbers of batches) and the plots that rank 0 draws.
    """
    parts: list[Any] = [m for m in module.modules() if isinstance(getattr(m, "gather_distributed", None), bool)]
    saved = [m.gather_distributed for m in parts]
    for m in parts:
        m.gather_distributed = False
    try:
        yield
    finally:
        for m, flag in zip(parts, saved, strict=True):
            m.gather_distributed = flag


class PretrainOutput(NamedTuple):
    """What one pre-training forward returns: the representations the objectives score, and their targets.

    Attributes:
        mask: ``(N, L)`` removed patches, 1 = removed.
        image_embedding: ``(N, embed_dim)`` projected class token (not normalised) for the
            contrastive objective, ``None`` without it.
        text_embedding: ``(N, embed_dim)`` pooled embedding of the whole caption, ``None`` without it.
        pred: ``(N, L, p·p·C)`` predicted patches (``None`` without masked image modelling).
        target: ``(N, L, p·p·C)`` the image's patches (``None`` without masked image modelling).
        caption_logits: ``(N, T', V)`` caption decoder logits (``None`` without captioning).
        caption_labels: ``(N, T')`` ids they predict, the pad id where nothing is predicted.
    """

    mask: Tensor
    image_embedding: Tensor | None = None
    text_embedding: Tensor | None = None
    pred: Tensor | None = None
    target: Tensor | None = None
    caption_logits: Tensor | None = None
    caption_labels: Tensor | None = None


class FundusMMNet(nn.Module):
    """Image and text towers with fusion and the two generative decoders (see the module docstring).

    Args:
        config: The model section of the recipe config.
        tokenizer: The caption tokenizer (vocabulary size, context length, special ids).
        image_size: Input side.
        gather_distributed: Under DDP, draw the masks for the global batch, so that a step equals
            one process on the concatenated batch (:func:`qualcl.recipes.modules.gathering`).
    """

    def __init__(
        self, config: ModelConfig, tokenizer: CaptionTokenizer, image_size: int, *, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        self.config, self.tokenizer, self.gather_distributed = config, tokenizer, gather_distributed
        c, tok = config, tokenizer
        self.image = vit_encoder(c.encoder, image_size=image_size)
        width, patches = self.image.num_features, (self.image.num_patches, self.image.patch_size)
        self.image_proj = nn.Linear(width, c.embed_dim)
        self.text: TextEncoder | PretrainedTextEncoder
        if c.text_tower == "pretrained":
            self.text = PretrainedTextEncoder(
                text_model_path(c), tok.base_ids, output_dim=c.embed_dim, pad_id=tok.pad_id,
                context_length=tok.context_length, freeze=c.text_freeze,
            )  # fmt: skip
        else:
            self.text = TextEncoder(
                tok.vocab_size, width=c.text_width, layers=c.text_layers, heads=c.text_heads,
                context_length=tok.context_length, output_dim=c.embed_dim, pad_id=tok.pad_id, end_id=tok.end_id,
            )  # fmt: skip
        generative = c.mim or c.caption != "none"
        fused = generative and c.fusion
        self.image_tokens = nn.Linear(width, c.fusion_dim) if generative else None
        self.text_tokens = nn.Linear(self.text.width, c.fusion_dim) if fused else None
        self.fusion = CrossAttentionFusion(  # its text side is only read by the masked caption decoder
            c.fusion_dim, c.fusion_heads, c.fusion_depth, bidirectional=c.caption == "masked"
        ) if fused else None  # fmt: skip
        self.mae_decoder = MAEDecoder(
            *patches, 3, encoder_dim=c.fusion_dim, decoder_dim=c.decoder_dim, depth=c.decoder_depth,
            num_heads=c.decoder_heads,
        ) if c.mim else None  # fmt: skip
        self.caption_decoder = CaptionDecoder(
            tok.vocab_size, c.caption_width, c.caption_depth, c.caption_heads, context_length=tok.context_length,
            context_dim=c.fusion_dim, mode=c.caption, pad_id=tok.pad_id,
        ) if c.caption != "none" else None  # fmt: skip

    # ------------------------------------------------------------------ embeddings
    def encode_image(self, images: Tensor) -> Tensor:
        """``(N, 3, S, S)`` → ``(N, embed_dim)`` L2-normalised embeddings of the whole image (no masking)."""
        return F.normalize(self.image_proj(self.image(images)), dim=-1)

    def encode_text(self, ids: Tensor) -> Tensor:
        """``(N, T)`` ids → ``(N, embed_dim)`` L2-normalised embeddings."""
        return F.normalize(self.text(ids)[0], dim=-1)

    # ------------------------------------------------------------------ pre-training
    def forward(self, images: Tensor, ids: Tensor, *, generator: torch.Generator | None = None) -> PretrainOutput:
        """One pre-training forward: what the switched-on objectives score (see the module docstring).

        Args:
            images: ``(N, 3, S, S)`` in ``[0, 1]``.
            ids: ``(N, T)`` caption ids of the tokenizer.
            generator: Draws of the image and caption masking.
        """
        config, tok = self.config, self.tokenizer
        n = total = images.shape[0]
        offset = 0
        if self.gather_distributed:  # the global batch's rows and this rank's first row
            everyone, offset = gather_with_grad(torch.zeros(n, 1, device=images.device))
            total = everyone.shape[0]
        masking = random_masking(
            images.new_zeros(total, self.image.num_patches, 1), config.mask_ratio, generator=generator
        )
        if total != n:  # this rank's rows of the global batch's masks
            masking = MaskingResult(*(t[offset : offset + n] for t in masking))
        # the masked pass feeds the decoders and FLIP's contrastive view; CLIP alone needs only the whole image
        masked_pass = self.image_tokens is not None or config.contrastive_view == "masked"
        h_img = self.image.forward_masked(images, masking.ids_keep) if masked_pass else None
        z_img = pooled_text = text_tokens = None
        if config.contrastive or (self.fusion is not None and config.caption != "masked"):
            pooled_text, text_tokens = self.text(ids)
            if config.contrastive:
                cls = h_img[:, 0] if h_img is not None and config.contrastive_view == "masked" else self.image(images)
                z_img = self.image_proj(cls)
            else:
                pooled_text = None
        if self.image_tokens is None or h_img is None:
            return PretrainOutput(masking.mask, z_img, pooled_text)
        image_tokens = self.image_tokens(h_img)
        caption_ids, caption_labels = ids, None
        if config.caption == "masked":
            corrupted = mask_tokens(
                ids if total == n else gather_no_grad(ids),
                mask_id=tok.mask_id,
                vocab_size=tok.vocab_size,
                special_ids=tok.special_ids,
                ratio=config.text_mask_ratio,
                generator=generator,
            )
            caption_ids, selected = corrupted.ids[offset : offset + n], corrupted.selected[offset : offset + n]
            caption_labels = ids.masked_fill(~selected, tok.pad_id)
            text_tokens = self.text(caption_ids)[1]
        fused_image, fused_text = image_tokens, None
        text_padding = caption_ids == tok.pad_id
        if self.fusion is not None and self.text_tokens is not None:
            assert text_tokens is not None
            fused_image, fused_text = self.fusion(
                image_tokens, self.text_tokens(text_tokens), text_padding_mask=text_padding
            )
        pred = target = logits = None
        if self.mae_decoder is not None:
            pred = self.mae_decoder(fused_image, masking.ids_restore, mask=masking.mask)
            target = patchify(images, self.image.patch_size)
        if self.caption_decoder is not None:
            if config.caption == "masked":
                if fused_text is not None:
                    context = torch.cat([fused_image, fused_text], dim=1)
                    context_padding = torch.cat([text_padding.new_zeros(n, fused_image.shape[1]), text_padding], 1)
                else:
                    context, context_padding = image_tokens, None
                logits = self.caption_decoder(caption_ids, context, context_padding_mask=context_padding)
            else:  # autoregressive: the un-fused image tokens (the fused ones have read the whole caption)
                logits = self.caption_decoder(ids[:, :-1], image_tokens)
                caption_labels = ids[:, 1:]
        return PretrainOutput(masking.mask, z_img, pooled_text, pred, target, logits, caption_labels)

    @torch.no_grad()
    def reconstruct(
        self, images: Tensor, ids: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(pred (N, L, p·p·C), mask (N, L))`` of one masked forward on this process alone, for the plots."""
        with per_process(self):
            out = self.forward(images, ids, generator=generator)
        if out.pred is None:
            raise ValueError("this model has no MAE decoder (model.mim=False)")
        return out.pred, out.mask

    @torch.no_grad()
    def generate(self, images: Tensor, max_tokens: int | None = None) -> Tensor:
        """Greedy captions ``(N, T)`` of an autoregressive caption decoder (start token first)."""
        if self.caption_decoder is None or self.config.caption != "autoregressive" or self.image_tokens is None:
            raise ValueError("greedy captioning needs model.caption='autoregressive'")
        tok = self.tokenizer
        limit = tok.context_length if max_tokens is None else min(max_tokens, tok.context_length)
        h = self.image_tokens(self.image.forward_features(images))
        ids = torch.full((images.shape[0], 1), tok.start_id, dtype=torch.long, device=images.device)
        done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        while ids.shape[1] < limit and not bool(done.all()):
            logits = self.caption_decoder(ids, h)[:, -1]
            logits[:, [tok.pad_id, tok.start_id, tok.mask_id]] = float("-inf")
            nxt = torch.where(done, torch.full_like(done, tok.pad_id, dtype=torch.long), logits.argmax(-1))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == tok.end_id
        return ids
