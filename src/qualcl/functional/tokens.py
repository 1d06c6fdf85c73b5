"""Caption maths: BERT's token masking and the caption cross-entropy (CoCa, masked captioning)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import (
    check_finite,
    check_float_tensor,
    check_int,
    check_integer_tensor,
    check_number,
    check_token_ids,
)

__all__ = ["MaskedTokens", "caption_loss", "caption_token_losses", "mask_tokens"]


class MaskedTokens(NamedTuple):
    """What :func:`mask_tokens` returns.

    Attributes:
        ids: ``(N, T)`` the corrupted token ids (the decoder's input).
        selected: ``(N, T)`` bool, the positions chosen for prediction (replaced by the mask id,
            by a random token or left unchanged). The caption loss's labels are the original ids
            there and the pad id elsewhere: ``labels = ids.masked_fill(~selected, pad_id)``.
    """

    ids: Tensor
    selected: Tensor


def _draw(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def mask_tokens(
    ids: Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    ratio: float = 0.15,
    generator: torch.Generator | None = None,
) -> MaskedTokens:
    """BERT's masked-language-model corruption: select ``ratio`` of the tokens, then 80/10/10.

    Every token that is not special is selected independently with probability ``ratio``. Of the
    selected ones, 80 % become ``mask_id``, 10 % a token drawn uniformly from the non-special
    vocabulary (BERT draws from the whole vocabulary; excluding special ids keeps pads and
    start/end markers where they belong), and 10 % stay unchanged. Special tokens (padding,
    start/end, the mask itself) are never selected or changed.

    Args:
        ids: ``(N, T)`` integer token ids in ``[0, vocab_size)``.
        mask_id: The mask token's id (one of ``special_ids`` or not; it is never drawn at random).
        vocab_size: Size of the vocabulary.
        special_ids: Ids that are never selected (pad, start, end, mask, …).
        ratio: Selection probability in ``[0, 1]`` (BERT: 0.15).
        generator: Optional ``torch.Generator`` for the draws.

    Returns:
        :class:`MaskedTokens` ``(ids, selected)``.

    Examples:
        >>> import torch
        >>> from qualcl.functional import mask_tokens
        >>> ids = torch.tensor([[1, 7, 8, 9, 2, 0, 0]])  # start, three words, end, padding
        >>> out = mask_tokens(ids, mask_id=3, vocab_size=10, special_ids=[0, 1, 2, 3], ratio=1.0,
        ...                   generator=torch.Generator().manual_seed(0))
        >>> out.selected.int().tolist()
        [[0, 1, 1, 1, 0, 0, 0]]
        >>> labels = ids.masked_fill(~out.selected, 0)  # pad id 0 = ignored by the caption loss

    Reference:
        Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
        Understanding", NAACL 2019.
    """
    size = check_int("vocab_size", vocab_size, minimum=2)
    check_token_ids("ids", ids, size, allow_empty=True)
    mask = check_int("mask_id", mask_id, minimum=0, maximum=size - 1)
    special = sorted({check_int("special id", s, minimum=0, maximum=size - 1) for s in special_ids} | {mask})
    p = check_number("ratio", ratio, minimum=0.0, maximum=1.0)
    ordinary = torch.ones(size, dtype=torch.bool)
    ordinary[special] = False
    candidates = ordinary.nonzero().flatten().to(ids.device)
    if candidates.numel() == 0:
        raise ValueError("every id of the vocabulary is special: no token can be masked or drawn")
    maskable = ordinary.to(ids.device)[ids]
    selected = (_draw(tuple(ids.shape), generator, ids.device) < p) & maskable
    action = _draw(tuple(ids.shape), generator, ids.device)
    pick = (_draw(tuple(ids.shape), generator, ids.device) * candidates.numel()).long()
    pick = pick.clamp_(max=candidates.numel() - 1)
    out = torch.where(selected & (action < 0.8), torch.full_like(ids, mask), ids)
    out = torch.where(selected & (action >= 0.8) & (action < 0.9), candidates[pick].to(ids.dtype), out)
    return MaskedTokens(out, selected)


def caption_loss(logits: Tensor, labels: Tensor, *, pad_id: int, label_smoothing: float = 0.0) -> Tensor:
    r"""Token cross-entropy averaged over the labelled (non-pad) positions (open_clip's CoCa loss).

    .. math::
        \mathcal L = -\frac{1}{|\mathcal T|} \sum_{(n,t) \in \mathcal T} \log
        \operatorname{softmax}(z_{nt})_{y_{nt}}, \qquad \mathcal T = \{(n, t) : y_{nt} \neq \text{pad}\}

    For autoregressive captioning the labels are the input ids shifted by one
    (``logits = decoder(ids[:, :-1], ...)``, ``labels = ids[:, 1:]``); for masked captioning the
    original ids at the selected positions and ``pad_id`` elsewhere (see :func:`mask_tokens`).
    When no position is labelled (a batch in which masking selected nothing) the loss is 0, with
    a zero gradient.

    Args:
        logits: ``(N, T, V)`` vocabulary logits.
        labels: ``(N, T)`` target ids in ``[0, V)``; ``pad_id`` positions are ignored.
        pad_id: The id that marks positions without a target.
        label_smoothing: Cross-entropy label smoothing in ``[0, 1)``.

    Returns:
        A scalar.

    Examples:
        >>> import torch
        >>> from qualcl.functional import caption_loss
        >>> logits = torch.zeros(1, 3, 5)
        >>> round(caption_loss(logits, torch.tensor([[4, 2, 0]]), pad_id=0).item(), 4)  # log 5
        1.6094

    Reference:
        Yu et al., "CoCa: Contrastive Captioners are Image-Text Foundation Models", TMLR 2022.
    """
    losses, counted = caption_token_losses(logits, labels, pad_id=pad_id, label_smoothing=label_smoothing)
    if not bool(counted.any()):
        return logits.sum() * 0.0
    return losses.sum() / counted.sum()


def caption_token_losses(
    logits: Tensor,
    labels: Tensor,
    *,
    pad_id: int,
    label_smoothing: float = 0.0,
    names: tuple[str, str] = ("logits", "labels"),
) -> tuple[Tensor, Tensor]:
    """Checked ``(N, T)`` token cross-entropies (0 at ``pad_id``) and the ``(N, T)`` bool mask of labelled positions.

    The terms of :func:`caption_loss` (which is their sum over the mask's count); ``names`` are the
    argument names the errors use.

    Examples:
        >>> import torch
        >>> losses, counted = caption_token_losses(torch.zeros(1, 3, 5), torch.tensor([[4, 2, 0]]), pad_id=0)
        >>> counted.tolist(), round(losses.sum().item(), 4)
        ([[True, True, False]], 3.2189)
    """
    logits_name, labels_name = names
    check_float_tensor(logits_name, logits)
    if logits.ndim != 3 or logits.shape[-1] < 2 or logits.shape[1] == 0:
        raise ValueError(
            f"{logits_name} must have shape (N, T, V) with T >= 1, V >= 2, got shape {tuple(logits.shape)}"
        )
    check_integer_tensor(labels_name, labels)
    if tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"{labels_name} must have shape (N, T) = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
    vocab = logits.shape[-1]
    pad = check_int("pad_id", pad_id, minimum=None)
    smoothing = check_number("label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
    if smoothing >= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    counted = labels != pad
    if labels.numel() and bool(counted.any()):
        used = labels[counted]
        if int(used.min()) < 0 or int(used.max()) >= vocab:
            raise ValueError(
                f"{labels_name} must lie in [0, V={vocab}) (or be pad_id={pad}), got values in "
                f"[{int(used.min())}, {int(used.max())}]: the decoder's vocabulary does not match the labels"
            )
    check_finite(logits_name, logits)
    losses = F.cross_entropy(
        logits.reshape(-1, vocab),
        labels.reshape(-1).long(),
        ignore_index=pad,
        label_smoothing=smoothing,
        reduction="none",
    )
    return losses.reshape(labels.shape), counted
