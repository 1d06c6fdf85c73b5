"""``ClipLoss``: symmetric image–text InfoNCE, optionally class-level, with exact distributed gradients."""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl._validation import check_embeddings, check_labels, check_positive, check_scalar
from qualcl.functional.info_nce import compute_dtype
from qualcl.kernels._dispatch import check_impl, prefers_dense
from qualcl.kernels.fused_info_nce import fused_info_nce_rows
from qualcl.losses._contrastive import Pool, gather_pool
from qualcl.losses.base import Loss

__all__ = ["ClipLoss"]


def _label_targets(labels: Tensor, column_labels: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Row-stochastic soft targets over the same-label columns, and which rows have a negative column."""
    same = labels[:, None] == column_labels[None, :]
    weights = same.to(dtype)
    contrasted = (~same).any(dim=1).to(dtype)
    return weights / weights.sum(dim=1, keepdim=True), contrasted


class ClipLoss(Loss):
    r"""Symmetric image–text contrastive loss (CLIP), with optional class-level positives.

    .. math::
        L = \tfrac12\big[\mathrm{CE}(s\, I T^\top, Y) + \mathrm{CE}(s\, T I^\top, Y)\big]

    with logit scale ``s``. Without ``labels`` the target ``Y`` is the identity (row ``i`` of the
    images matches row ``i`` of the texts); on one process and with ``normalize=False`` this is
    exactly open_clip's ``ClipLoss``. With ``labels`` (e.g. class-level captions, where every image
    of a grade shares the caption's meaning) every same-label pair is a positive and ``Y`` is
    uniform over a row's positives (soft-target cross-entropy, the UniCL form); a row whose every
    column shares its label has nothing to contrast and leaves the mean (a batch of one grade
    gives 0), as in :class:`~qualcl.losses.InfoNCE`.

    **Exactly open_clip** (``torch.equal`` on the loss and the gradients): without ``labels``, on
    one process, with ``normalize=False`` and on the dense path, i.e. ``impl="naive"`` or
    ``impl="auto"`` up to ``qualcl.kernels.DENSE_LIMIT`` (2^20) logits per direction. The fused
    path (``"torch"``, ``"triton"``, ``"auto"`` above the limit) computes the same loss in another
    order: equal to open_clip within float32 rounding (about 1e-6 relative), not bit for bit.
    Under DDP the local-loss reduction differs from open_clip's in rounding only.

    ``logit_bias`` is accepted as open_clip's ``ClipLoss`` accepts it: a scalar added to every
    logit. Under the softmax it cancels, so it changes neither the loss nor any gradient (its own
    gradient is zero); the dense path adds it exactly as open_clip does (bit-identical), the fused
    path leaves it out. The learnt bias of SigLIP only matters for a *sigmoid* loss, which is not
    this one.

    The logit scale is the one passed to ``forward`` (as open_clip's models return it, already
    exponentiated), else the module's own: a fixed ``init_logit_scale`` or, with
    ``learnable_logit_scale=True``, a parameter ``log_logit_scale`` whose exponential is clamped
    to ``max_logit_scale``.

    With ``gather_distributed=True`` under ``torch.distributed`` it uses open_clip's local-loss +
    gather-with-grad scheme: local rows against gathered columns, targets offset by rank; gradients
    after DDP averaging equal one process on the concatenated batch (also for unequal batches).

    The anchors are the ``N`` image–text pairs: pair ``i`` has the loss ``(ℓ^{I→T}_i + ℓ^{T→I}_i) / 2``;
    ``weights`` ``(N,)`` weigh pairs in both directions' means and ``reduction="none"`` returns
    ``(N,)`` (``"sum"``: their sum).

    Args:
        init_logit_scale: Initial / fixed logit scale (CLIP: ``1/0.07``).
        learnable_logit_scale: Learn ``log(scale)`` as a parameter.
        max_logit_scale: Clamp for the learnt scale (CLIP: 100).
        normalize: L2-normalise the features inside.
        gather_distributed: Gather across processes.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per pair).
        impl: ``"naive"`` (dense logits and ``F.cross_entropy``, open_clip's computation),
            ``"torch"`` / ``"triton"`` (each direction through the fused
            :func:`qualcl.kernels.fused_info_nce`: no ``B × B`` logits), or ``"auto"`` (default: dense up
            to ``qualcl.kernels.DENSE_LIMIT`` logits, fused beyond).

    Shape:
        - image_features, text_features: ``(N, D)``; labels, weights: ``(N,)``.
        - logit_bias: scalar tensor or float.
        - Output: scalar (float32 for half inputs), or a dict with ``output_dict=True``:
          ``{"loss", "image_to_text", "text_to_image", "logit_scale"}``.

    Examples:
        >>> import torch
        >>> from qualcl.losses import ClipLoss
        >>> loss_fn = ClipLoss(learnable_logit_scale=True)
        >>> img, txt = torch.randn(8, 64), torch.randn(8, 64)
        >>> grades = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
        >>> loss_fn(img, txt, labels=grades).shape
        torch.Size([])

    Reference:
        Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
        2021; open_clip ``ClipLoss``.
    """

    family = "image_text"
    batch_global = True

    def __init__(
        self,
        init_logit_scale: float = 1 / 0.07,
        learnable_logit_scale: bool = False,
        max_logit_scale: float = 100.0,
        normalize: bool = True,
        gather_distributed: bool = False,
        impl: str = "auto",
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction, gather_distributed=gather_distributed)
        self.impl = check_impl(impl)
        check_positive("init_logit_scale", init_logit_scale)
        self.max_logit_scale = check_positive("max_logit_scale", max_logit_scale)
        log_scale = torch.tensor(math.log(init_logit_scale))
        if learnable_logit_scale:
            self.log_logit_scale: Tensor = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        self.learnable_logit_scale = learnable_logit_scale
        self.normalize = normalize

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return (
            f"learnable_logit_scale={self.learnable_logit_scale}, normalize={self.normalize}, "
            f"{self.protocol_repr()}, impl={self.impl!r}"
        )

    def current_logit_scale(self) -> Tensor:
        """The module's own logit scale ``exp(log_logit_scale)``, clamped to ``max_logit_scale``."""
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    @overload
    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float | None = ...,
        logit_bias: Tensor | float | None = ...,
        *,
        labels: Tensor | None = ...,
        weights: Tensor | None = ...,
        output_dict: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float | None = ...,
        logit_bias: Tensor | float | None = ...,
        *,
        labels: Tensor | None = ...,
        weights: Tensor | None = ...,
        output_dict: Literal[True],
    ) -> dict[str, Tensor]: ...

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float | None = None,
        logit_bias: Tensor | float | None = None,
        *,
        labels: Tensor | None = None,
        weights: Tensor | None = None,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """Compute the loss; see the class docstring for shapes."""
        check_embeddings("image_features", image_features, nonzero=self.normalize)
        n, d = image_features.shape
        check_embeddings("text_features", text_features, dim=d, nonzero=self.normalize)
        if text_features.shape[0] != n:
            raise ValueError(f"text_features must have {n} rows like image_features, got {tuple(text_features.shape)}")
        if labels is not None:
            labels = check_labels("labels", labels, n, image_features.device)
        weights = self.checked_weights(weights, n, image_features.device)
        scale = (
            self.current_logit_scale()
            if logit_scale is None
            else check_scalar("logit_scale", logit_scale, positive=True)
        )
        bias = None if logit_bias is None else check_scalar("logit_bias", logit_bias)

        dtype = compute_dtype(image_features, text_features)
        img, txt = image_features.to(dtype), text_features.to(dtype)
        if self.normalize:
            img, txt = F.normalize(img, dim=1), F.normalize(txt, dim=1)

        distributed = self.distributed
        images = gather_pool(img, labels, distributed=distributed)
        texts = gather_pool(txt, labels, distributed=distributed)
        if weights is None and self.reduction == "mean" and not distributed and labels is None:
            if prefers_dense(self.impl, n, n):  # open_clip's computation, bit for bit
                i2t = F.cross_entropy(self._logits(img, texts, scale, bias), texts.own_columns(n))
                t2i = F.cross_entropy(self._logits(txt, images, scale, bias), images.own_columns(n))
                return self._output((i2t + t2i) / 2, i2t, t2i, scale, output_dict)
        rows_i2t = self._direction(img, texts, scale, bias, labels)
        rows_t2i = self._direction(txt, images, scale, bias, labels)
        i2t = self.reduce(rows_i2t[0], weights, counted=rows_i2t[1])
        t2i = self.reduce(rows_t2i[0], weights, counted=rows_t2i[1])
        return self._output((i2t + t2i) / 2, i2t, t2i, scale, output_dict)

    @staticmethod
    def _output(
        loss: Tensor, i2t: Tensor, t2i: Tensor, scale: Tensor | float, output_dict: bool
    ) -> Tensor | dict[str, Tensor]:
        if output_dict:
            used_scale = scale.detach() if isinstance(scale, Tensor) else torch.tensor(scale)
            return {"loss": loss, "image_to_text": i2t, "text_to_image": t2i, "logit_scale": used_scale}
        return loss

    @staticmethod
    def _logits(rows: Tensor, columns: Pool, scale: Tensor | float, bias: Tensor | float | None) -> Tensor:
        logits = scale * rows @ columns.features.T
        return logits if bias is None else logits + bias

    def _direction(
        self,
        rows: Tensor,
        columns: Pool,
        scale: Tensor | float,
        bias: Tensor | float | None,
        labels: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """One direction's ``(N,)`` per-row losses and the mask of rows that have something to contrast."""
        with_labels = labels is not None and columns.labels is not None
        if prefers_dense(self.impl, rows.shape[0], columns.features.shape[0]):  # open_clip's computation
            logits = self._logits(rows, columns, scale, bias)
            if not with_labels:
                losses = F.cross_entropy(logits, columns.own_columns(rows.shape[0]), reduction="none")
                return losses, torch.ones_like(losses)
            assert labels is not None
            assert columns.labels is not None
            soft, contrasted = _label_targets(labels, columns.labels, rows.dtype)
            return F.cross_entropy(logits, soft, reduction="none") * contrasted, contrasted
        return fused_info_nce_rows(
            scale * rows,  # open_clip's (scale * features) @ others.T, with the scale's gradient
            columns.features,
            positive_index=None if with_labels else columns.own_columns(rows.shape[0]),
            labels=labels if with_labels else None,
            candidate_labels=columns.labels if with_labels else None,
            temperature=1.0,
            normalize=False,
            reduction="none",
            impl=self.impl,
        )
