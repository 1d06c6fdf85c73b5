"""``ClipLoss``: symmetric image–text InfoNCE, optionally class-level, with exact distributed gradients."""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl import kernels
from qualcl._validation import check_embeddings, check_finite, check_positive
from qualcl.distributed import gather_no_grad, gather_with_grad, is_distributed
from qualcl.functional.info_nce import compute_dtype
from qualcl.kernels._dispatch import check_impl, prefers_dense
from qualcl.losses._distributed import reduce_across_ranks

__all__ = ["ClipLoss"]


def _targets(
    labels: Tensor | None,
    column_labels: Tensor | None,
    n: int,
    offset: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Class ids (one positive per row) or a row-stochastic target matrix (label positives)."""
    if labels is None or column_labels is None:
        return torch.arange(n, device=device) + offset
    same = (labels[:, None] == column_labels[None, :]).to(dtype)
    return same / same.sum(dim=1, keepdim=True)


class ClipLoss(nn.Module):
    r"""Symmetric image–text contrastive loss (CLIP), with optional class-level positives.

    .. math::
        L = \tfrac12\big[\mathrm{CE}(s\, I T^\top, Y) + \mathrm{CE}(s\, T I^\top, Y)\big]

    with logit scale ``s``. Without ``labels`` the target ``Y`` is the identity (row ``i`` of the
    images matches row ``i`` of the texts); on one process and with ``normalize=False`` this is
    exactly open_clip's ``ClipLoss``. With ``labels`` (e.g. class-level captions, where every image
    of a grade shares the caption's meaning) every same-label pair is a positive and ``Y`` is
    uniform over a row's positives (soft-target cross-entropy, the UniCL form).

    The logit scale is the one passed to ``forward`` (as open_clip's models return it, already
    exponentiated), else the module's own: a fixed ``init_logit_scale`` or, with
    ``learnable_logit_scale=True``, a parameter ``log_logit_scale`` whose exponential is clamped
    to ``max_logit_scale``.

    With ``gather_distributed=True`` under ``torch.distributed`` it uses open_clip's local-loss +
    gather-with-grad scheme: local rows against gathered columns, targets offset by rank; gradients
    after DDP averaging equal one process on the concatenated batch (also for unequal batches).

    Args:
        init_logit_scale: Initial / fixed logit scale (CLIP: ``1/0.07``).
        learnable_logit_scale: Learn ``log(scale)`` as a parameter.
        max_logit_scale: Clamp for the learnt scale (CLIP: 100).
        normalize: L2-normalise the features inside.
        gather_distributed: Gather across processes.
        impl: ``"naive"`` (dense logits and ``F.cross_entropy``, open_clip's computation),
            ``"torch"`` / ``"triton"`` (each direction through the fused
            :func:`qualcl.kernels.info_nce`: no ``B × B`` logits), or ``"auto"`` (default: dense up
            to ``qualcl.kernels.DENSE_LIMIT`` logits, fused beyond).

    Shape:
        - image_features, text_features: ``(N, D)``; labels: ``(N,)`` integer.
        - Output: scalar (float32 for half inputs), or a dict with ``output_dict=True``:
          ``{"loss", "image_to_text", "text_to_image", "logit_scale"}``.

    Example:
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

    def __init__(
        self,
        init_logit_scale: float = 1 / 0.07,
        learnable_logit_scale: bool = False,
        max_logit_scale: float = 100.0,
        normalize: bool = True,
        gather_distributed: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
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
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return (
            f"learnable_logit_scale={self.learnable_logit_scale}, normalize={self.normalize}, "
            f"gather_distributed={self.gather_distributed}, impl={self.impl!r}"
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
        *,
        labels: Tensor | None = ...,
        output_dict: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float | None = ...,
        *,
        labels: Tensor | None = ...,
        output_dict: Literal[True],
    ) -> dict[str, Tensor]: ...

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float | None = None,
        *,
        labels: Tensor | None = None,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """Compute the loss; see the class docstring for shapes."""
        check_embeddings("image_features", image_features, nonzero=self.normalize)
        n, d = image_features.shape
        check_embeddings("text_features", text_features, dim=d, nonzero=self.normalize)
        if text_features.shape[0] != n:
            raise ValueError(f"text_features must have {n} rows like image_features, got {tuple(text_features.shape)}")
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.shape != (n,) or labels.is_floating_point():
                raise ValueError(f"labels must be an integer tensor of shape ({n},)")
        scale = self._resolve_scale(logit_scale)

        dtype = compute_dtype(image_features, text_features)
        img, txt = image_features.to(dtype), text_features.to(dtype)
        if self.normalize:
            img, txt = F.normalize(img, dim=1), F.normalize(txt, dim=1)

        distributed = self.gather_distributed and is_distributed()
        offset = 0
        all_img, all_txt, all_labels = img, txt, labels
        if distributed:
            all_img, offset = gather_with_grad(img)
            all_txt, _ = gather_with_grad(txt)
            all_labels = None if labels is None else gather_no_grad(labels)

        if prefers_dense(self.impl, n, all_txt.shape[0]):
            i2t, t2i = self._dense(img, txt, all_img, all_txt, scale, labels, all_labels, offset, distributed)
        else:
            i2t, t2i = (
                self._fused(a, b, scale, labels, all_labels, offset, distributed)
                for a, b in ((img, all_txt), (txt, all_img))
            )
        loss = (i2t + t2i) / 2
        if output_dict:
            used_scale = scale.detach() if isinstance(scale, Tensor) else torch.tensor(scale)
            return {"loss": loss, "image_to_text": i2t, "text_to_image": t2i, "logit_scale": used_scale}
        return loss

    def _dense(
        self,
        img: Tensor,
        txt: Tensor,
        all_img: Tensor,
        all_txt: Tensor,
        scale: Tensor | float,
        labels: Tensor | None,
        all_labels: Tensor | None,
        offset: int,
        distributed: bool,
    ) -> tuple[Tensor, Tensor]:
        """Both directions from dense logits (open_clip's computation)."""
        n = img.shape[0]
        logits_per_image = scale * img @ all_txt.T
        logits_per_text = scale * txt @ all_img.T
        target = _targets(labels, all_labels, n, offset, img.device, img.dtype)
        if distributed:
            i2t = reduce_across_ranks(F.cross_entropy(logits_per_image, target, reduction="none"), None, "mean")
            t2i = reduce_across_ranks(F.cross_entropy(logits_per_text, target, reduction="none"), None, "mean")
        else:
            i2t = F.cross_entropy(logits_per_image, target)
            t2i = F.cross_entropy(logits_per_text, target)
        return i2t, t2i

    def _fused(
        self,
        rows: Tensor,
        columns: Tensor,
        scale: Tensor | float,
        labels: Tensor | None,
        all_labels: Tensor | None,
        offset: int,
        distributed: bool,
    ) -> Tensor:
        """One direction (rows against gathered columns) through :func:`qualcl.kernels.info_nce`."""
        n = rows.shape[0]
        with_labels = labels is not None and all_labels is not None
        loss = kernels.info_nce(
            scale * rows,  # open_clip's (scale * features) @ others.T, with the scale's gradient
            columns,
            positive_index=None if with_labels else torch.arange(n, device=rows.device) + offset,
            labels=labels if with_labels else None,
            candidate_labels=all_labels if with_labels else None,
            temperature=1.0,
            normalize=False,
            reduction="sum" if distributed else "mean",
            impl=self.impl,
        )
        if not distributed:
            return loss
        return reduce_across_ranks(loss.reshape(1), rows.new_ones(n), "mean")

    def _resolve_scale(self, logit_scale: Tensor | float | None) -> Tensor | float:
        if logit_scale is None:
            return self.current_logit_scale()
        if isinstance(logit_scale, Tensor):
            if logit_scale.numel() != 1:
                raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
            check_finite("logit_scale", logit_scale)
            if float(logit_scale.detach()) <= 0:
                raise ValueError(f"logit_scale must be > 0, got {float(logit_scale.detach())}")
            return logit_scale
        return check_positive("logit_scale", logit_scale)
