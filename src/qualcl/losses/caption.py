"""``CaptionLoss``: CoCa's token cross-entropy (:func:`qualcl.functional.caption_loss`) on the loss protocol."""

from __future__ import annotations

from torch import Tensor

from qualcl._validation import check_int, check_number
from qualcl.functional.tokens import caption_token_losses
from qualcl.losses.base import Loss

__all__ = ["CaptionLoss"]


class CaptionLoss(Loss):
    r"""Token cross-entropy over the labelled positions, ignoring the pad id (CoCa's caption loss).

    .. math::
        \mathcal L = -\frac{\sum_{(n,t)\in\mathcal T} w_n \log \operatorname{softmax}(z_{nt})_{y_{nt}}}
        {\sum_{(n,t)\in\mathcal T} w_n},
        \qquad \mathcal T = \{(n,t) : y_{nt} \ne \text{pad}\}

    Autoregressive captioning: ``loss(decoder(ids[:, :-1], ctx), ids[:, 1:])``; masked captioning:
    targets are the original ids at the masked positions and ``pad_id`` elsewhere. A batch without
    any labelled position gives an attached 0. See :func:`qualcl.functional.caption_loss` (the
    unweighted mean, equal to open_clip's CoCa caption loss).

    A per-sample loss (family ``prediction``): the anchors are the captions, weighted by
    ``weights`` ``(N,)``; the mean is over *tokens* (a caption counts with its labelled tokens),
    ``"sum"`` sums the tokens' losses and ``"none"`` returns each caption's weighted token sum
    ``(N,)``. With ``gather_distributed=True`` under ``torch.distributed`` the token count (times
    the weights) is summed across ranks, so ranks holding captions of different lengths give the
    one-process token mean; without it each rank takes its own token mean and DDP averages those.

    Args:
        pad_id: The id ignored as a target (open_clip's CoCa: 0).
        label_smoothing: Cross-entropy label smoothing in ``[0, 1)``.
        reduction: ``"mean"`` (over tokens), ``"sum"`` or ``"none"`` (per caption).
        gather_distributed: Take the token mean over every rank.

    Shape:
        - input: ``(N, T, V)`` logits; target: ``(N, T)`` integer ids; weights: ``(N,)``.
        - Output: scalar, or ``(N,)`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from qualcl.losses import CaptionLoss
        >>> CaptionLoss(pad_id=0)(torch.randn(2, 5, 50), torch.tensor([[4, 9, 2, 0, 0], [7, 2, 0, 0, 0]])).shape
        torch.Size([])

    Reference:
        Yu et al., "CoCa: Contrastive Captioners are Image-Text Foundation Models", TMLR 2022.
    """

    family = "prediction"
    batch_global = False

    def __init__(
        self,
        pad_id: int = 0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, gather_distributed=gather_distributed)
        self.pad_id = check_int("pad_id", pad_id, minimum=None)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
        if self.label_smoothing >= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"pad_id={self.pad_id}, label_smoothing={self.label_smoothing}, {self.protocol_repr()}"

    def forward(self, input: Tensor, target: Tensor, *, weights: Tensor | None = None) -> Tensor:
        """Compute the loss; see the class docstring for shapes."""
        losses, labelled = caption_token_losses(
            input, target, pad_id=self.pad_id, label_smoothing=self.label_smoothing, names=("input", "target")
        )
        tokens = labelled.sum(dim=1).to(losses.dtype)
        per_caption = losses.sum(dim=1) / tokens.clamp_min(1.0)
        zero = 0.0 * input.sum()  # attached even when no position is labelled
        return self.reduce(
            per_caption + zero, self.checked_weights(weights, input.shape[0], input.device), counted=tokens
        )
