"""SigLIP's sigmoid pairwise loss per image row, streamed over blocks: never the ``(N, M)`` logits in memory.

The logits ``x_ij = s * image_i · text_j + b`` of a row block × column block are computed, turned into
the row sums of ``softplus(-t_ij x_ij)`` (``t = +1`` on the row's own text, ``-1`` elsewhere) and
dropped: forward keeps ``(N,)`` row sums. Backward recomputes each block's logits and accumulates
the image, text, scale and bias gradients from ``d loss_i / d x_ij = -t_ij sigmoid(-t_ij x_ij)``, so
memory is O((N + M)·D + R·C) against open_clip's O(N·M) (it keeps every logit, its label and its
log-sigmoid for backward). The streaming op is registered as ``qualcl::siglip`` (what
``torch.compile`` and ``torch.export`` see); eager calls run the same forward and backward through a
plain :class:`torch.autograd.Function` (see :func:`qualcl.kernels._dispatch.through_custom_op`).
On CUDA the same op runs Triton kernels (``qualcl.kernels._siglip_triton``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import check_embeddings, check_int, check_reduction, check_scalar, check_weights
from qualcl.functional.reduction import weighted_reduce
from qualcl.kernels._dispatch import resolve_impl, through_custom_op

__all__ = ["BLOCK_ELEMENTS", "fused_siglip", "naive_siglip", "siglip_block_shape"]

BLOCK_ELEMENTS = 1 << 23
"""Logits per block of the streaming path (32 MiB in float32, two such buffers): ``R = BLOCK_ELEMENTS // C``.

Large blocks mean few parallel regions per call, which matters on a shared CPU (each one waits for
every thread); memory stays O((N + M)·D) plus these two buffers.
"""
MAX_COLUMN_BLOCK = 1 << 13
"""Widest column block by default (more texts are walked block by block, row sums accumulate)."""
TRITON_MAX_DIM = 1024
"""Widest feature dimension of the Triton kernel (the feature tiles stay whole in registers)."""
_SOFTPLUS_THRESHOLD = 40.0
"""``softplus(x) = x`` beyond this: ``log1p(exp(-40))`` is below float64's resolution of 40."""


def siglip_block_shape(n: int, m: int, chunk_size: int | None, column_chunk_size: int | None) -> tuple[int, int]:
    """Rows and columns per block: the given sizes, or ``C = min(M, 8192)`` and ``R = 2^23 // C``."""
    cols = max(1, min(m, column_chunk_size or MAX_COLUMN_BLOCK))
    rows = chunk_size or max(1, BLOCK_ELEMENTS // cols)
    return max(1, min(rows, n)), cols


def _diagonal(r0: int, r1: int, c0: int, c1: int, offset: int, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """Block-local ``(rows, cols)`` of the positive pairs ``(i, i + offset)`` inside rows ``r0:r1`` × cols ``c0:c1``."""
    lo, hi = max(r0, c0 - offset), min(r1, c1 - offset)
    if lo >= hi:
        return None
    rows = torch.arange(lo, hi, device=device)
    return rows - r0, rows + offset - c0


def _block_logits(scaled: Tensor, text: Tensor, bias: Tensor | None, buffer: Tensor) -> Tensor:
    """``(s * image) @ text.T + b`` for one block (open_clip's order of operations), written into ``buffer``.

    Every block reuses the same flat ``buffer`` (no allocation per block, so no allocator churn).
    """
    x = buffer[: scaled.shape[0] * text.shape[0]].view(scaled.shape[0], text.shape[0])
    torch.mm(scaled, text.T, out=x)
    if bias is not None:
        x.add_(bias)
    return x


class _Pieces(NamedTuple):
    """What the gradients are assembled from, for upstream row gradients ``h`` (``(N,)``).

    ``pulled = G @ text`` (``(N, D)``, independent of ``h``), ``d_text = s G^T (h * image)``
    (``(M, D)``) and ``bias_rows = G.sum(1)`` (``(N,)``), with ``G_ij = d loss_i / d x_ij``; empty
    tensors where not needed.
    """

    pulled: Tensor
    d_text: Tensor
    bias_rows: Tensor


def _walk(
    image: Tensor,
    text: Tensor,
    scale: Tensor,
    bias: Tensor | None,
    offset: int,
    rows: int,
    cols: int,
    *,
    losses: bool,
    upstream: Tensor | None,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, _Pieces]:
    """One pass over the blocks: the ``(N,)`` losses (if ``losses``) and the gradient pieces for ``upstream``.

    ``needs`` = whether ``pulled``, ``d_text`` and ``bias_rows`` are wanted (``upstream`` = ``None``:
    ones). Each block's logits are computed once; the loss takes the row sums of ``softplus`` with
    the positive left out of the negatives' sum (no ``softplus(x) - x`` cancellation), the gradient
    ``G = sigmoid(x)`` with ``-sigmoid(-x)`` at the positive.
    """
    need_pulled, need_text, need_bias = needs
    n, m = image.shape[0], text.shape[0]
    logits_buffer = image.new_empty(min(rows, n) * min(cols, m))
    softplus_buffer = image.new_empty(logits_buffer.shape[0] if losses else 0)
    out = image.new_zeros(n) if losses else image.new_empty(0)
    pulled = image.new_zeros(image.shape) if need_pulled else image.new_empty(0)  # distinct: op outputs
    d_text = torch.zeros_like(text) if need_text else image.new_empty(0)
    bias_rows = image.new_zeros(n) if need_bias else image.new_empty(0)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        scaled = image[r0:r1] * scale  # (R, D) operands: nothing (N, D) beyond the results
        weighted = image.new_empty(0)
        if need_text:
            h = scale if upstream is None else upstream[r0:r1].to(image.dtype)[:, None] * scale
            weighted = image[r0:r1] * h
        for c0 in range(0, m, cols):
            c1 = min(m, c0 + cols)
            x = _block_logits(scaled, text[c0:c1], bias, logits_buffer)
            diag = _diagonal(r0, r1, c0, c1, offset, x.device)
            positive = None
            if diag is not None:
                positive = x[diag].clone()
                x[diag] = float("-inf")
            if losses:
                if diag is not None and positive is not None:
                    out[r0:r1].index_add_(0, diag[0], F.softplus(-positive, threshold=_SOFTPLUS_THRESHOLD))
                terms = softplus_buffer[: x.numel()].view_as(x)
                torch.ops.aten.softplus.out(x, 1.0, _SOFTPLUS_THRESHOLD, out=terms)
                out[r0:r1] += terms.sum(dim=1)
            if not any(needs):
                continue
            slope = torch.sigmoid_(x)  # d softplus(x) / dx for the negatives (0 at the positive)
            if diag is not None and positive is not None:
                slope[diag] = -torch.sigmoid(-positive)  # d softplus(-x) / dx for the positive
            if need_pulled:
                pulled[r0:r1].addmm_(slope, text[c0:c1])
            if need_text:
                d_text[c0:c1].addmm_(slope.T, weighted)
            if need_bias:
                bias_rows[r0:r1] += slope.sum(dim=1)
    return out, _Pieces(pulled, d_text, bias_rows)


def _assemble(
    grad: Tensor, image: Tensor, scale: Tensor, bias: Tensor | None, pieces: _Pieces, text_factor: Tensor | None
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Image, text, scale and bias gradients from the pieces (``d_text`` times ``text_factor`` if given).

    ``d image_i = grad_i s pulled_i``, ``d s = sum_i grad_i image_i · pulled_i``,
    ``d b = sum_i grad_i bias_rows_i``: ``grad`` and ``s`` enter on ``(N, D)`` operands, never on a block.
    """
    g = grad.to(image.dtype)
    d_image = d_scale = d_bias = None
    if pieces.pulled.numel():
        d_image = pieces.pulled * (g * scale)[:, None]
        d_scale = (g * (image * pieces.pulled).sum(dim=1)).sum().reshape(scale.shape)
    if pieces.bias_rows.numel() and bias is not None:
        d_bias = (g * pieces.bias_rows).sum().reshape(bias.shape)
    d_text = None
    if pieces.d_text.numel():
        d_text = pieces.d_text if text_factor is None else pieces.d_text * text_factor
    return d_image, d_text, d_scale, d_bias


def _concrete() -> bool:
    """Whether tensors hold values here (not traced by ``torch.compile`` / ``torch.export``, no fake tensors)."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is None


def _upstream_factor(grad: Tensor, hint: Tensor | None) -> Tensor | None:
    """``c`` with ``grad = c * hint`` (``hint`` = ``None``: ones) to rounding, else ``None``.

    A scalar reduction of the per-image losses (weighted or not, across ranks or not) sends back
    exactly such a gradient, so the text gradient accumulated in the forward pass for ``hint`` only
    needs scaling; any other upstream gradient makes backward recompute the blocks.
    """
    h = torch.ones_like(grad) if hint is None else hint.to(grad.dtype)
    if h.numel() == 0:
        return grad.new_zeros(())
    k = int(h.argmax())
    if float(h[k]) == 0.0:
        return grad.new_zeros(()) if not bool(grad.any()) else None
    c = grad[k] / h[k]
    expected = c * h
    tolerance = 8 * torch.finfo(grad.dtype).eps * expected.abs()
    return c if bool(((grad - expected).abs() <= tolerance).all()) else None


def _siglip_impl(
    image: Tensor,
    text: Tensor,
    scale: Tensor,
    bias: Tensor | None,
    hint: Tensor | None,
    offset: int,
    rows: int,
    cols: int,
    cache: list[bool],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The streaming forward: ``(losses, pulled, d_text, bias_rows)``.

    ``cache`` = whether the gradient pieces for an upstream gradient along ``hint`` are computed
    now (``[image or scale, text, bias]``): then backward only scales them (3 GEMMs per block in
    all instead of 4).
    """
    if backend == "triton":  # the kernel keeps the row sums only: backward recomputes
        from qualcl.kernels import _siglip_triton

        losses = _siglip_triton.siglip_forward(image, text, scale, bias, offset)
        return losses, image.new_empty(0), image.new_empty(0), image.new_empty(0)
    needs = (bool(cache[0]), bool(cache[1]), bool(cache[2]) and bias is not None)
    losses, pieces = _walk(image, text, scale, bias, offset, rows, cols, losses=True, upstream=hint, needs=needs)
    return (losses, *pieces)


_siglip_op = torch.library.custom_op("qualcl::siglip", mutates_args=())(_siglip_impl)


@_siglip_op.register_fake
def _siglip_fake(
    image: Tensor,
    text: Tensor,
    scale: Tensor,
    bias: Tensor | None,
    hint: Tensor | None,
    offset: int,
    rows: int,
    cols: int,
    cache: list[bool],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n = image.shape[0]
    empty = image.new_empty(0)
    if backend == "triton":
        return image.new_empty(n, dtype=torch.float32), empty, torch.empty_like(empty), torch.empty_like(empty)
    return (
        image.new_empty(n),
        torch.empty_like(image) if cache[0] else empty,
        torch.empty_like(text) if cache[1] else torch.empty_like(empty),
        image.new_empty(n) if cache[2] and bias is not None else torch.empty_like(empty),
    )


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    image, text, scale, bias, hint, offset, rows, cols, _, backend = inputs
    _, pulled, d_text, bias_rows = output
    ctx.mark_non_differentiable(pulled, d_text, bias_rows)
    ctx.save_for_backward(image, text, scale, bias, hint, pulled, d_text, bias_rows)
    ctx.options = (offset, rows, cols, backend)


def _backward(ctx: Any, grad: Tensor, *_unused: Tensor) -> tuple[Tensor | None, ...]:
    image, text, scale, bias, hint, pulled, d_text, bias_rows = ctx.saved_tensors
    offset, rows, cols, backend = ctx.options
    need_image, need_text, need_scale, need_bias = (bool(b) for b in ctx.needs_input_grad[:4])
    need_bias = need_bias and bias is not None
    wanted = (need_image or need_scale, need_text, need_bias)
    cached = (pulled.numel() > 0 or not wanted[0]) and (d_text.numel() > 0 or not wanted[1])
    cached = cached and (bias_rows.numel() > 0 or not wanted[2])
    # the check reads values: while tracing (torch.compile, export, fake tensors) backward recomputes
    factor = _upstream_factor(grad, hint) if cached and _concrete() else None
    if factor is not None:
        pieces = _Pieces(pulled, d_text, bias_rows)
    elif backend == "triton":
        from qualcl.kernels import _siglip_triton

        pieces = _Pieces(*_siglip_triton.siglip_backward(grad, image, text, scale, bias, offset, wanted))
    else:  # recompute every block for this upstream gradient
        _, pieces = _walk(image, text, scale, bias, offset, rows, cols, losses=False, upstream=grad, needs=wanted)
    compute = image if backend == "torch" else image.float()  # the Triton pieces are float32
    d_image, d_text_out, d_scale, d_bias = _assemble(grad, compute, scale, bias, pieces, factor)
    return (
        d_image.to(image.dtype) if need_image and d_image is not None else None,
        d_text_out.to(text.dtype) if need_text and d_text_out is not None else None,
        d_scale if need_scale else None,
        d_bias if need_bias else None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


_siglip_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerSigLip(torch.autograd.Function):
    """``qualcl::siglip`` for eager calls: the same forward, context and backward, without the op wrapper."""

    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> tuple[Tensor, ...]:  # type: ignore[override]
        output = _siglip_impl(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return _backward(ctx, *grads)


def naive_siglip(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor | None, offset: int = 0) -> Tensor:
    """Dense ``(N,)`` per-image losses: open_clip's computation on the full ``(N, M)`` logits."""
    logits = scale * image @ text.T
    if bias is not None:
        logits = logits + bias
    n = image.shape[0]
    signs = -torch.ones_like(logits)
    rows = torch.arange(n, device=image.device)
    signs[rows, rows + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum(dim=1)


def _as_scalar_tensor(name: str, value: Tensor | float, like: Tensor, dtype: torch.dtype, *, positive: bool) -> Tensor:
    checked = check_scalar(name, value, positive=positive)
    if isinstance(checked, Tensor):
        return checked.to(dtype)
    return torch.tensor(checked, dtype=dtype, device=like.device)


def fused_siglip(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float | None = None,
    *,
    offset: int = 0,
    weights: Tensor | None = None,
    reduction: str = "mean",
    impl: str = "auto",
    chunk_size: int | None = None,
    column_chunk_size: int | None = None,
    gradient_hint: Tensor | bool | None = None,
) -> Tensor:
    r"""SigLIP's sigmoid loss of ``(N, D)`` images against ``(M, D)`` texts, without the ``(N, M)`` logits.

    .. math::
        x_{ij} = s\, \mathrm{image}_i \cdot \mathrm{text}_j + b, \qquad
        \ell_i = -\sum_{j} \log \sigma(t_{ij} x_{ij}), \qquad
        t_{ij} = \begin{cases} +1 & j = i + \mathrm{offset} \\ -1 & \text{otherwise} \end{cases}

    ``reduction="mean"`` (no weights) is ``sum_i l_i / N``: open_clip's ``SigLipLoss`` (it divides
    by the number of images). The features are used as given (open_clip normalises in the model);
    ``offset`` places the images' own texts in a gathered text batch (a rank's first row under DDP).

    Implementations (``impl``): ``"torch"`` streams row blocks of ``chunk_size`` × column blocks of
    ``column_chunk_size`` (memory O((N + M)·D + R·C); backward recomputes each block's logits),
    ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``; float32 and half, ``D <= 1024``) keeps
    only the row sums in the forward kernel and recomputes the tiles in two backward kernels (one
    over row blocks, one over column blocks: no atomics), ``"naive"`` is open_clip's dense
    computation (memory O(N·M)), ``"auto"`` is Triton on CUDA when available, else ``"torch"``.
    When a scalar reduction follows (``reduction`` not ``"none"``, or a ``gradient_hint``), the
    torch streaming forward also accumulates the gradient for it, and backward only scales it: 3 block
    GEMMs in all instead of 4. Any other upstream gradient still gets exact gradients (backward
    then recomputes the blocks).
    Half inputs are computed in float32 (the Triton path reads them as they are and accumulates in
    float32) and float64 stays float64 (on the torch paths).

    Args:
        image: ``(N, D)`` image features.
        text: ``(M, D)`` text features, ``M >= N + offset``.
        logit_scale: ``s > 0`` (already exponentiated, as open_clip's models return it); a tensor
            that requires grad is learnt.
        logit_bias: ``b`` (a float or one-element tensor), or ``None`` for none.
        offset: Column of image row 0's own text.
        weights: ``(N,)`` non-negative per-image weights.
        reduction: ``"mean"`` (weighted mean over images), ``"sum"`` or ``"none"`` (``(N,)``).
        impl: ``"auto"``, ``"triton"``, ``"torch"`` or ``"naive"``.
        chunk_size: Rows per block of the torch path (default ``2^23 // C``).
        column_chunk_size: Columns per block of the torch path (default ``min(M, 8192)``).
        gradient_hint: With ``reduction="none"``: the ``(N,)`` direction the upstream gradient
            of the per-image losses will take (the weights of the scalar reduction that follows;
            ``True``: ones), so that the forward pass computes the gradient as above.

    Returns:
        Scalar loss, or ``(N,)`` with ``reduction="none"``.

    Raises:
        ValueError: On mismatched shapes, non-finite inputs, ``logit_scale <= 0``, an ``offset``
            that puts a positive outside the texts, a bad ``reduction``, ``impl`` or block size,
            ``impl="triton"`` where it cannot run (no CUDA, float64, ``D > 1024``).
        TypeError: On non-floating features or a non-number scale or bias.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from qualcl.kernels.siglip import fused_siglip
        >>> img, txt = F.normalize(torch.randn(64, 32), dim=1), F.normalize(torch.randn(64, 32), dim=1)
        >>> loss = fused_siglip(img, txt, 10.0, -10.0, chunk_size=16, column_chunk_size=16)
        >>> dense = fused_siglip(img, txt, 10.0, -10.0, impl="naive")
        >>> bool(torch.allclose(loss, dense))
        True

    Reference:
        Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023; open_clip
        ``SigLipLoss``; Dao, "FlashAttention-2", 2023 (recomputing backward).
    """
    check_embeddings("image", image)
    n, d = image.shape
    check_embeddings("text", text, dim=d)
    m = text.shape[0]
    offset = check_int("offset", offset, minimum=0)
    if offset + n > m:
        raise ValueError(f"offset + N must be <= M (every image needs its text): offset={offset}, N={n}, M={m}")
    check_reduction(reduction)
    if weights is not None:
        check_weights("weights", weights, n)
    if isinstance(gradient_hint, Tensor):
        check_weights("gradient_hint", gradient_hint, n)
    elif gradient_hint is not None and not isinstance(gradient_hint, bool):
        raise TypeError(f"gradient_hint must be an (N,) tensor, a bool or None, got {type(gradient_hint).__name__}")
    for name, size in (("chunk_size", chunk_size), ("column_chunk_size", column_chunk_size)):
        if size is not None:
            check_int(name, size, minimum=1)
    backend = resolve_impl(impl, image, text)
    dtype = torch.float64 if torch.float64 in (image.dtype, text.dtype) else torch.float32
    if backend == "triton" and (dtype == torch.float64 or d > TRITON_MAX_DIM):
        if impl == "triton":
            raise ValueError(f"impl='triton' supports float16/bfloat16/float32 and D <= {TRITON_MAX_DIM}")
        backend = "torch"
    storage = dtype
    if backend == "triton" and image.dtype == text.dtype and image.dtype in (torch.float16, torch.bfloat16):
        storage = image.dtype
    img, txt = image.to(storage).contiguous(), text.to(storage).contiguous()
    scale = _as_scalar_tensor("logit_scale", logit_scale, img, dtype, positive=True)
    bias = None if logit_bias is None else _as_scalar_tensor("logit_bias", logit_bias, img, dtype, positive=False)
    if backend == "naive":
        losses = naive_siglip(img, txt, scale, bias, offset)
    else:
        rows, cols = siglip_block_shape(n, m, chunk_size, column_chunk_size)
        if reduction != "none":
            gradient_hint = True if weights is None else weights
        hint = None if isinstance(gradient_hint, bool) or gradient_hint is None else gradient_hint.detach().to(dtype)
        cache = gradient_hint is not None and gradient_hint is not False and torch.is_grad_enabled()
        cache = cache and backend == "torch"
        needs = [
            cache and (img.requires_grad or scale.requires_grad),
            cache and txt.requires_grad,
            cache and bias is not None and bias.requires_grad,
        ]
        op = torch.ops.qualcl.siglip if through_custom_op() else _EagerSigLip.apply
        losses = op(img, txt, scale, bias, hint, offset, rows, cols, needs, backend)[0].to(dtype)
    return weighted_reduce(losses, weights, reduction)
