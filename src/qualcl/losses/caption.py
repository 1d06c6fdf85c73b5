"""``CaptionLoss``: the stateful wrapper of :func:`qualcl.functional.caption_loss`."""

from __future__ import annotations

from torch import Tensor, nn

from qualcl._validation import check_int, check_number
from qualcl.functional.tokens import caption_loss

__all__ = ["CaptionLoss"]


class CaptionLoss(nn.Module):
    r"""Token cross-entropy over the labelled positions, ignoring the pad id (CoCa's caption loss).

    .. math::
        \mathcal L = -\frac{1}{|\mathcal T|}\sum_{(n,t)\in\mathcal T} \log \operatorname{softmax}(z_{nt})_{y_{nt}},
        \qquad \mathcal T = \{(n,t) : y_{nt} \ne \text{pad}\}

    Autoregressive captioning: ``loss(decoder(ids[:, :-1], ctx), ids[:, 1:])``; masked captioning:
    labels are the original ids at the masked positions and ``pad_id`` elsewhere. A batch without
    any labelled position gives 0. See :func:`qualcl.functional.caption_loss`.

    Args:
        pad_id: The id ignored as a target (open_clip's CoCa: 0).
        label_smoothing: Cross-entropy label smoothing in ``[0, 1)``.

    Shape:
        - logits: ``(N, T, V)``; labels: ``(N, T)`` integer.
        - Output: scalar.

    Examples:
        >>> import torch
        >>> from qualcl.losses import CaptionLoss
        >>> CaptionLoss(pad_id=0)(torch.randn(2, 5, 50), torch.tensor([[4, 9, 2, 0, 0], [7, 2, 0, 0, 0]])).shape
        torch.Size([])

    Reference:
        Yu et al., "CoCa: Contrastive Captioners are Image-Text Foundation Models", TMLR 2022.
    """

    def __init__(self, pad_id: int = 0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.pad_id = check_int("pad_id", pad_id, minimum=None)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
        if self.label_smoothing >= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"pad_id={self.pad_id}, label_smoothing={self.label_smoothing}"

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss; see the class docstring for shapes."""
        return caption_loss(logits, labels, pad_id=self.pad_id, label_smoothing=self.label_smoothing)
