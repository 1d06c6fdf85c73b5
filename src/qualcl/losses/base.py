"""The one protocol of qualcl's losses: calling families, reduction, per-anchor weights, exact DDP.

Every loss in :mod:`qualcl.losses` derives from :class:`Loss` and so keeps the same conventions
(``docs/losses.md`` explains them with examples):

* **A calling family** (:data:`FAMILIES`): within a family every loss takes the same leading
  arguments in the same order.

  ``metric``: ``(embeddings, labels, indices_tuple, ref_emb, ref_labels)``, pytorch-metric-learning's
  (circle, fine triplet); ``two_view``: ``(view1, view2, ...)``, row ``i`` of ``view2`` is the positive
  of row ``i`` of ``view1`` (InfoNCE, NT-Xent, multi-level, patch discrimination, mixup consistency);
  ``image_text``: ``(image_features, text_features, logit_scale, logit_bias)``, open_clip's (CLIP,
  SigLIP); ``clustering``: ``(embeddings, assignments)`` (region discrimination); ``prediction``:
  ``(input, target, ...)``, torch's (focal, caption, masked reconstruction).

* **Reduction and weights**: the value is a reduction of per-anchor losses ``l_i``
  (``reduction="mean" | "sum" | "none"``); an optional ``weights=`` ``(N,)`` tensor of non-negative
  per-anchor weights makes the mean ``sum_i w_i l_i / sum_i w_i`` over the anchors that count
  (weights of ones are no weights). ``"none"`` returns the weighted per-anchor losses ``w_i l_i``
  (0 for anchors that have nothing to contrast). When nothing is selected (every weight 0, no
  positive pair, ...) the value is a zero that stays attached to the graph, never NaN.
* **Exact under DDP** (``gather_distributed=True`` and an initialised process group of more
  than one process): a *batch-global* loss (:attr:`Loss.batch_global`: its value depends on other
  samples of the batch) contrasts the local anchors with the candidates of every rank
  (:func:`qualcl.distributed.gather_with_grad`, gradients summed back to their owners) and takes its
  mean over the anchors of every rank, so that after DDP's gradient averaging the gradients equal
  those of one process on the concatenated batch (rank order), and the value averaged over ranks
  equals that process's value. A per-sample loss gathers nothing: with the flag only its mean's
  denominator (anchors, tokens or patches, times their weights) is summed across ranks, so ranks
  holding different numbers of tokens still give the one-process mean; without it each rank takes
  its own mean and DDP averages those means. ``tests/losses/test_conventions.py`` checks both on two
  gloo processes for every loss of :data:`qualcl.losses.__all__`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from qualcl._validation import check_reduction, check_weights
from qualcl.distributed import is_distributed
from qualcl.functional.reduction import weighted_reduce
from qualcl.losses._contrastive import reduce_across_ranks

__all__ = ["FAMILIES", "Loss"]

#: The calling families and the leading ``forward`` arguments each one fixes.
FAMILIES: dict[str, tuple[str, ...]] = {
    "metric": ("embeddings", "labels", "indices_tuple", "ref_emb", "ref_labels"),
    "two_view": ("view1", "view2"),
    "image_text": ("image_features", "text_features", "logit_scale", "logit_bias"),
    "clustering": ("embeddings", "assignments"),
    "prediction": ("input", "target"),
}


class Loss(nn.Module):
    """Base of every qualcl loss: ``reduction``, per-anchor ``weights`` and ``gather_distributed``.

    A subclass sets :attr:`family` and :attr:`batch_global`, computes its per-anchor losses and
    returns ``self.reduce(losses, weights, counted=...)``; under DDP a batch-global subclass
    contrasts its local anchors with gathered candidates before that (see the module docstring).

    Args:
        reduction: ``"mean"`` (weighted mean over the anchors that count), ``"sum"`` or ``"none"``.
        gather_distributed: Under ``torch.distributed``, give exactly the one-process result on the
            concatenated batch (batch-global losses gather their candidates; per-sample losses sum
            their mean's denominator across ranks).

    Examples:
        >>> from qualcl.losses import FocalLoss
        >>> FocalLoss.family, FocalLoss.batch_global
        ('prediction', False)
    """

    #: The calling family (a key of :data:`FAMILIES`).
    family: ClassVar[str] = ""
    #: Whether the value depends on other samples of the batch (negatives, pairs, prototypes).
    batch_global: ClassVar[bool] = True

    def __init__(self, *, reduction: str = "mean", gather_distributed: bool = False) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        if not isinstance(gather_distributed, bool):
            raise TypeError(f"gather_distributed must be a bool, got {type(gather_distributed).__name__}")
        self.gather_distributed = gather_distributed

    @property
    def distributed(self) -> bool:
        """Whether this call runs the distributed path: ``gather_distributed`` and more than one process."""
        return self.gather_distributed and is_distributed()

    def protocol_repr(self) -> str:
        """``reduction=..., gather_distributed=...`` for ``extra_repr``."""
        return f"reduction={self.reduction!r}, gather_distributed={self.gather_distributed}"

    @staticmethod
    def checked_weights(weights: Tensor | None, n: int, device: torch.device) -> Tensor | None:
        """``weights`` checked as ``(n,)`` finite and non-negative, on ``device`` and detached (or ``None``)."""
        if weights is None:
            return None
        check_weights("weights", weights, n)
        return weights.detach().to(device)

    def reduce(self, losses: Tensor, weights: Tensor | None = None, *, counted: Tensor | None = None) -> Tensor:
        """Reduce per-anchor ``losses`` ``(N,)`` by :attr:`reduction`, exactly across ranks when distributed.

        Args:
            losses: ``(N,)`` per-anchor losses (0 where an anchor does not count).
            weights: ``(N,)`` user weights, or ``None``.
            counted: ``(N,)`` bool or float: which anchors enter the mean's denominator (those
                with something to contrast), or ``None`` for all; multiplies ``weights``.

        Returns:
            A scalar, or ``(N,)`` weighted per-anchor losses for ``"none"``.
        """
        w = weights
        if counted is not None:
            mask = counted.to(losses.dtype)
            w = mask if w is None else w.to(losses.dtype) * mask
        if self.distributed:
            weighted = losses if w is None else losses * w.to(losses.dtype)
            return reduce_across_ranks(weighted, w, self.reduction)
        return weighted_reduce(losses, w, self.reduction)
