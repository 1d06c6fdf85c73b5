"""The text side of image–text models: open_clip's BPE tokenizer on a compact vocabulary, and its text transformer.

Captions of one domain use a few hundred of CLIP's 49,408 BPE tokens. :class:`CaptionTokenizer`
keeps open_clip's tokenization (its byte-level BPE, lower-casing and clean-up) but numbers only
the tokens seen when it is fitted, after five special ids, so that the text tower's embedding and
a caption decoder's output layer are small enough to train from scratch on a CPU. Tokens never
seen map to ``<unk>``. :class:`TextEncoder` is open_clip's ``TextTransformer`` (random init,
offline) with end-of-text pooling.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from qualcl._validation import check_int, check_token_ids

__all__ = ["CaptionTokenizer", "TextEncoder"]

SPECIALS = ("<pad>", "<start>", "<end>", "<mask>", "<unk>")


def _bpe() -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class CaptionTokenizer:
    """open_clip's BPE tokenization with a vocabulary restricted to the tokens of a caption corpus.

    Ids: ``0 <pad>``, ``1 <start>``, ``2 <end>``, ``3 <mask>``, ``4 <unk>``, then the corpus' BPE
    tokens by decreasing frequency (ties by BPE id). :meth:`encode` writes
    ``<start> tokens… <end> <pad>…`` in ``context_length`` slots (long captions are cut, and still
    end with ``<end>``).

    Args:
        bpe_ids: The BPE ids (open_clip's numbering) of the vocabulary, in id order after the specials.
        context_length: Slots per encoded caption (at least 3).

    Examples:
        >>> from qualcl.models import CaptionTokenizer
        >>> tok = CaptionTokenizer.fit(["left eye, no lesions", "right eye, moderate lesions"], context_length=10)
        >>> ids = tok.encode(["left eye, moderate lesions"])
        >>> ids.tolist()
        [[1, 11, 7, 5, 12, 6, 8, 2, 0, 0]]
        >>> tok.decode(ids)
        ['left eye , moderate lesions']
        >>> tok.vocab_size, tok.encode(["unseen words"])[0, 1].item() == tok.unk_id
        (13, True)
    """

    pad_id = 0
    start_id = 1
    end_id = 2
    mask_id = 3
    unk_id = 4

    def __init__(self, bpe_ids: Sequence[int], context_length: int = 64) -> None:
        self.context_length = check_int("context_length", context_length, minimum=3)
        self.bpe_ids = [int(i) for i in bpe_ids]
        if len(set(self.bpe_ids)) != len(self.bpe_ids):
            raise ValueError("bpe_ids must not repeat a token")
        self._to_id = {bpe: len(SPECIALS) + i for i, bpe in enumerate(self.bpe_ids)}
        self._bpe = _bpe()

    @classmethod
    def fit(cls, texts: Sequence[str], context_length: int | None = None, *, min_count: int = 1) -> CaptionTokenizer:
        """The vocabulary of ``texts``: every BPE token seen at least ``min_count`` times.

        ``context_length`` defaults to the longest caption + 2 (start and end).
        """
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty sequence of captions")
        bpe = _bpe()
        encoded = [bpe.encode(str(t)) for t in texts]
        empty = [i for i, e in enumerate(encoded) if not e]
        if empty:
            raise ValueError(f"caption(s) {empty[:5]} are empty after tokenization: captions must not be empty")
        counts = Counter(token for e in encoded for token in e)
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        length = max(len(e) for e in encoded) + 2 if context_length is None else context_length
        return cls(kept, length)

    @property
    def vocab_size(self) -> int:
        """Specials + corpus tokens."""
        return len(SPECIALS) + len(self.bpe_ids)

    @property
    def special_ids(self) -> tuple[int, ...]:
        """The ids that are not words (never masked or drawn by :func:`~qualcl.functional.mask_tokens`)."""
        return tuple(range(len(SPECIALS)))

    def tokens(self, text: str) -> list[int]:
        """The compact ids of ``text``'s BPE tokens (no start, end or padding)."""
        return [self._to_id.get(t, self.unk_id) for t in self._bpe.encode(str(text))]

    def encode(self, texts: Sequence[str]) -> Tensor:
        """``(N, context_length)`` int64 ids; refuses empty captions."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.tokens(text)
            if not ids:
                raise ValueError(f"caption {row} ({text!r}) is empty after tokenization: captions must not be empty")
            ids = [self.start_id, *ids[: self.context_length - 2], self.end_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Texts of ``(N, T)`` ids up to the first ``<end>``; specials dropped, ``<unk>`` / ``<mask>`` kept."""
        rows = ids.tolist() if isinstance(ids, Tensor) else [list(r) for r in ids]
        texts = []
        for row in rows:
            words: list[str] = []
            run: list[int] = []
            for i in row:
                if i == self.end_id:
                    break
                if i >= len(SPECIALS) and i < self.vocab_size:
                    run.append(self.bpe_ids[i - len(SPECIALS)])
                    continue
                if run:
                    words.append(self._bpe.decode(run).strip())
                    run = []
                if i in (self.unk_id, self.mask_id):
                    words.append(SPECIALS[i])
            if run:
                words.append(self._bpe.decode(run).strip())
            texts.append(" ".join(w for w in words if w))
        return texts

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state (the run folder keeps it next to the weights)."""
        return {"bpe_ids": list(self.bpe_ids), "context_length": self.context_length}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> CaptionTokenizer:
        """Rebuild from :meth:`state_dict`."""
        return cls(state["bpe_ids"], int(state["context_length"]))


class TextEncoder(nn.Module):
    """open_clip's text transformer, randomly initialised, pooled at the end-of-text token.

    ``forward(ids)`` returns ``(pooled (N, output_dim), tokens (N, T, width))``. ``causal=True`` is
    CLIP's causal text tower (padding after ``<end>`` cannot reach any real position);
    ``causal=False`` attends both ways with padded keys masked (for masked-caption inputs).

    Args:
        vocab_size: Vocabulary size (``CaptionTokenizer.vocab_size``).
        width: Token width.
        layers: Transformer blocks.
        heads: Attention heads.
        context_length: Longest input.
        output_dim: Width of the pooled (projected) embedding.
        pad_id: Padding id.
        end_id: End-of-text id (the pooled position: its first occurrence).
        causal: Causal self-attention.

    Examples:
        >>> import torch
        >>> from qualcl.models import TextEncoder
        >>> encoder = TextEncoder(40, width=32, layers=1, heads=4, context_length=8, output_dim=16)
        >>> pooled, tokens = encoder(torch.tensor([[1, 7, 9, 2, 0, 0, 0, 0]]))
        >>> pooled.shape, tokens.shape
        (torch.Size([1, 16]), torch.Size([1, 8, 32]))

    Reference:
        Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
        ICML 2021 (the text tower); Cherti et al., open_clip (the implementation).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        width: int = 256,
        layers: int = 4,
        heads: int = 4,
        context_length: int = 64,
        output_dim: int = 256,
        pad_id: int = CaptionTokenizer.pad_id,
        end_id: int = CaptionTokenizer.end_id,
        causal: bool = True,
    ) -> None:
        super().__init__()
        from open_clip.transformer import TextTransformer

        self.vocab_size = check_int("vocab_size", vocab_size, minimum=2)
        self.context_length = check_int("context_length", context_length)
        self.width = check_int("width", width)
        self.output_dim = check_int("output_dim", output_dim)
        self.pad_id, self.end_id, self.causal = int(pad_id), int(end_id), bool(causal)
        self.net = TextTransformer(
            context_length=self.context_length,
            vocab_size=self.vocab_size,
            width=self.width,
            heads=check_int("heads", heads),
            layers=check_int("layers", layers),
            output_dim=self.output_dim,
            no_causal_mask=not self.causal,
            use_pad_mask=not self.causal,
            pad_id=self.pad_id,
            eos_id=self.end_id,
            pool_type="eos",
            output_tokens=True,
        )

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, T)`` ids → ``(pooled (N, output_dim), tokens (N, T, width))``."""
        check_token_ids(
            "ids", ids, self.vocab_size, context_length=self.context_length, owner="the text encoder's vocabulary"
        )
        if not torch.compiler.is_compiling():
            ended = (ids == self.end_id).any(dim=1)
            if not bool(ended.all()):
                rows = (~ended).nonzero().flatten()[:5].tolist()
                raise ValueError(f"caption(s) {rows} have no end token ({self.end_id}): it is the pooled position")
        length = ids.shape[1]
        if length < self.context_length:  # open_clip's causal mask is built for the full context
            ids = torch.nn.functional.pad(ids, (0, self.context_length - length), value=self.pad_id)
        pooled, tokens = self.net(ids.long())
        return pooled, tokens[:, :length]
