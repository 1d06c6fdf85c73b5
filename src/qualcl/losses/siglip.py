"""``SigLipLoss``: the sigmoid image–text loss of SigLIP, open_clip's values, exact under DDP, streamed when large."""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl._validation import check_embeddings, check_int, check_number, check_positive
from qualcl.distributed import gather_with_grad
from qualcl.functional.info_nce import compute_dtype
from qualcl.kernels._dispatch import check_impl, prefers_dense
from qualcl.kernels.siglip import fused_siglip
from qualcl.losses.base import Loss

__all__ = ["SigLipLoss"]


class SigLipLoss(Loss):
    r"""Sigmoid loss for language–image pre-training (SigLIP): every image–text pair is a binary problem.

    .. math::
        x_{ij} = s\, I_i \cdot T_j + b, \qquad
        \ell_i = -\sum_j \log \sigma(t_{ij} x_{ij}), \qquad t_{ij} = 2\,[i = j] - 1

    The loss of image ``i`` (the anchor) sums over every text of the batch; the mean over images is
    **open_clip's** ``SigLipLoss`` (it divides the sum over all pairs by the number of images): with
    ``normalize=False``, the same scale and bias and on one process the values and gradients agree
    to rounding (float64 tests). ``weights`` ``(N,)`` weight the images.

    **Scale and bias.** As in the paper, ``log_logit_scale`` (init ``log 10``) and ``logit_bias``
    (init ``-10``) are parameters of the module when ``learnable=True`` (the default: add the
    loss's parameters to the optimiser), buffers otherwise; the scale ``exp(log_logit_scale)`` is
    clamped to ``max_logit_scale``. A ``logit_scale`` passed to ``forward`` replaces both, as in
    open_clip, whose models return ``(logit_scale.exp(), logit_bias)``: the passed ``logit_bias`` is
    then used as given (``None``: no bias). Build the loss with ``learnable=False`` then, or DDP sees
    unused parameters. ``init_logit_bias=None`` gives no bias of the module's own.

    **Exact under DDP** (``gather_distributed=True``, several processes): the local images are
    contrasted with the texts of every rank (:func:`qualcl.distributed.gather_with_grad`; each
    image's own text at this rank's offset) and the mean is taken over the images of every rank, so
    after DDP's gradient averaging the gradients of features, scale and bias equal one process on
    the concatenated batch (also with unequal batches). open_clip instead passes text blocks between
    neighbours; the result is the same sum.

    **Memory.** ``impl="auto"`` computes the dense logits up to
    :data:`qualcl.kernels.DENSE_LIMIT` (2^20) of them and streams beyond
    (:func:`qualcl.kernels.siglip.fused_siglip`: blocks of logits recomputed in backward, never
    ``N × M`` in memory; on CUDA Triton kernels); ``"naive"`` is always dense, ``"torch"`` and
    ``"triton"`` always stream.

    Args:
        init_logit_scale: Initial (or fixed) scale ``s`` (SigLIP: 10).
        init_logit_bias: Initial (or fixed) bias ``b`` (SigLIP: -10), ``None`` for no bias.
        learnable: Learn ``log s`` and ``b`` as parameters.
        max_logit_scale: Clamp of the module's own scale (open_clip's training clamps at 100).
        normalize: L2-normalise the features inside (open_clip's models normalise before the loss:
            ``normalize=False`` is its exact computation).
        reduction: ``"mean"`` (over images, weighted), ``"sum"`` or ``"none"`` (``(N,)``).
        gather_distributed: Contrast with the texts of every rank (exact under DDP).
        impl: ``"auto"``, ``"naive"``, ``"torch"`` or ``"triton"``.
        chunk_size: Rows per block of the streaming path (default: ``2^23`` logits per block).
        column_chunk_size: Texts per block of the streaming path (default ``min(M, 8192)``).

    Shape:
        - image_features, text_features: ``(N, D)``; weights: ``(N,)``.
        - logit_scale, logit_bias: scalar tensors or floats.
        - Output: scalar, or ``(N,)`` with ``reduction="none"``; ``{"contrastive_loss": ...}``
          with ``output_dict=True`` (open_clip's key).

    Examples:
        >>> import torch
        >>> from qualcl.losses.siglip import SigLipLoss
        >>> loss_fn = SigLipLoss()
        >>> img, txt = torch.randn(8, 64), torch.randn(8, 64)
        >>> loss = loss_fn(img, txt)
        >>> loss.backward()
        >>> loss.shape, loss_fn.logit_bias.grad is not None
        (torch.Size([]), True)

    Reference:
        Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023; open_clip
        ``SigLipLoss``.
    """

    family = "image_text"
    batch_global = True

    def __init__(
        self,
        init_logit_scale: float = 10.0,
        init_logit_bias: float | None = -10.0,
        learnable: bool = True,
        max_logit_scale: float = 100.0,
        normalize: bool = True,
        reduction: str = "mean",
        gather_distributed: bool = False,
        impl: str = "auto",
        chunk_size: int | None = None,
        column_chunk_size: int | None = None,
    ) -> None:
        super().__init__(reduction=reduction, gather_distributed=gather_distributed)
        check_positive("init_logit_scale", init_logit_scale)
        self.max_logit_scale = check_positive("max_logit_scale", max_logit_scale)
        self.impl = check_impl(impl)
        for name, size in (("chunk_size", chunk_size), ("column_chunk_size", column_chunk_size)):
            if size is not None:
                check_int(name, size, minimum=1)
        self.chunk_size, self.column_chunk_size = chunk_size, column_chunk_size
        self.learnable = bool(learnable)
        self.normalize = bool(normalize)
        log_scale = torch.tensor(math.log(init_logit_scale))
        bias = None if init_logit_bias is None else torch.tensor(check_number("init_logit_bias", init_logit_bias))
        self.logit_bias: Tensor | None
        if learnable:
            self.log_logit_scale: Tensor = nn.Parameter(log_scale)
            self.logit_bias = None if bias is None else nn.Parameter(bias)
        else:
            self.register_buffer("log_logit_scale", log_scale)
            self.register_buffer("logit_bias", bias)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return (
            f"learnable={self.learnable}, bias={self.logit_bias is not None}, normalize={self.normalize}, "
            f"impl={self.impl!r}, {self.protocol_repr()}"
        )

    def current_logit_scale(self) -> Tensor:
        """The module's own scale ``exp(log_logit_scale)``, clamped to ``max_logit_scale``."""
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    @overload
    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float | None = ...,
        logit_bias: Tensor | float | None = ...,
        *,
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
        weights: Tensor | None = None,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """Compute the loss; see the class docstring for shapes."""
        check_embeddings("image_features", image_features, nonzero=self.normalize)
        n, d = image_features.shape
        check_embeddings("text_features", text_features, dim=d, nonzero=self.normalize)
        if text_features.shape[0] != n:
            raise ValueError(
                f"text_features must have {n} rows like image_features (one caption per image), "
                f"got shape {tuple(text_features.shape)}"
            )
        checked = self.checked_weights(weights, n, image_features.device)
        if logit_scale is None:  # the module's own scale, and its bias unless one is passed
            scale: Tensor | float = self.current_logit_scale()
            bias = self.logit_bias if logit_bias is None else logit_bias
        else:  # the model's, as open_clip's models return them: a bias of None is no bias
            scale, bias = logit_scale, logit_bias

        dtype = compute_dtype(image_features, text_features)
        img, txt = image_features.to(dtype), text_features.to(dtype)
        if self.normalize:
            img, txt = F.normalize(img, dim=1), F.normalize(txt, dim=1)
        texts, offset = gather_with_grad(txt) if self.distributed else (txt, 0)
        impl = "naive" if prefers_dense(self.impl, n, texts.shape[0]) else self.impl
        losses = fused_siglip(
            img,
            texts,
            scale,
            bias,
            offset=offset,
            reduction="none",
            impl=impl,
            chunk_size=self.chunk_size,
            column_chunk_size=self.column_chunk_size,
            gradient_hint=None if self.reduction == "none" else (True if checked is None else checked),
        )
        loss = self.reduce(losses, checked)
        return {"contrastive_loss": loss} if output_dict else loss
