"""Masked image modelling maths (He et al., MAE): patches, random masking, sin-cos positions, the patch loss."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor

from qualcl._validation import check_choice, check_finite, check_float_tensor, check_int, check_number

__all__ = [
    "MaskingResult",
    "kept_tokens",
    "masked_reconstruction_loss",
    "patch_errors",
    "patchify",
    "random_masking",
    "sincos_2d_position_embedding",
    "unpatchify",
]


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping square patches, flattened in MAE's layout.

    Patches run row-major over the grid; each patch is flattened as ``(p, q, c)`` — rows, columns,
    then channels — so ``patchify(x, p)[n, i * w + j]`` is ``x[n, :, i*p:(i+1)*p, j*p:(j+1)*p]``
    permuted to ``(p, p, C)`` and flattened (MAE's ``nchpwq->nhwpqc``).

    Args:
        images: ``(N, C, H, W)`` floating images, ``H`` and ``W`` divisible by ``patch_size``.
        patch_size: The side ``p`` of a patch.

    Returns:
        ``(N, L, p·p·C)`` patches with ``L = (H / p)·(W / p)``.

    Examples:
        >>> import torch
        >>> from qualcl.functional import patchify, unpatchify
        >>> x = torch.randn(2, 3, 64, 32)
        >>> patches = patchify(x, 16)
        >>> patches.shape
        torch.Size([2, 8, 768])
        >>> torch.equal(unpatchify(patches, 16, grid=(4, 2)), x)
        True

    Reference:
        He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (``models_mae.py``).
    """
    p = check_int("patch_size", patch_size)
    check_float_tensor("images", images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    out: Tensor = rearrange(images, "n c (h p) (w q) -> n (h w) (p q c)", p=p, q=p)
    return out


def unpatchify(patches: Tensor, patch_size: int, *, grid: tuple[int, int] | None = None) -> Tensor:
    """Invert :func:`patchify`: ``(N, L, p·p·C)`` patches back to ``(N, C, H, W)`` images.

    Args:
        patches: ``(N, L, p·p·C)`` patches in MAE's layout (row-major grid, ``(p, q, c)`` inside).
        patch_size: The side ``p`` of a patch.
        grid: ``(rows, columns)`` of the patch grid; ``None`` assumes a square grid (``L`` must be
            a perfect square).

    Returns:
        ``(N, C, rows·p, columns·p)`` images with ``C = patches.shape[-1] / p²``.
    """
    p = check_int("patch_size", patch_size)
    check_float_tensor("patches", patches)
    if patches.ndim != 3:
        raise ValueError(f"patches must have shape (N, L, p*p*C), got shape {tuple(patches.shape)}")
    length, dim = patches.shape[1:]
    if dim % (p * p) or dim == 0:
        raise ValueError(f"patches' last dimension {dim} is not a multiple of patch_size² = {p * p}")
    if grid is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"L = {length} patches do not form a square grid; pass grid=(rows, columns)")
        grid = (side, side)
    rows, cols = (check_int("grid rows", grid[0]), check_int("grid columns", grid[1]))
    if rows * cols != length:
        raise ValueError(f"grid {rows}x{cols} holds {rows * cols} patches, but patches has L = {length}")
    out: Tensor = rearrange(patches, "n (h w) (p q c) -> n c (h p) (w q)", h=rows, w=cols, p=p, q=p)
    return out


class MaskingResult(NamedTuple):
    """What :func:`random_masking` returns.

    Attributes:
        visible: ``(N, K, D)`` the kept tokens, in ``ids_keep`` order.
        mask: ``(N, L)`` float, 1 = removed, 0 = kept, in the original token order.
        ids_keep: ``(N, K)`` int64 indices of the kept tokens.
        ids_restore: ``(N, L)`` int64; gathering ``[visible, mask tokens]`` with it restores the
            original order (the inverse of the per-sample shuffle).
    """

    visible: Tensor
    mask: Tensor
    ids_keep: Tensor
    ids_restore: Tensor


def kept_tokens(length: int, mask_ratio: float, *, rounding: str = "nearest") -> int:
    """The number of tokens :func:`random_masking` keeps: ``round(L·(1 − r))``, or MAE's ``int(L·(1 − r))``.

    ``rounding="nearest"`` (qualcl's default) is Python's ``round``; ``rounding="floor"`` is MAE's
    ``len_keep = int(L * (1 - mask_ratio))``. They agree when the product, as computed in floating
    point, has a fractional part below 0.5 — e.g. MAE's ``L = 196, r = 0.75`` (49 either way) — and
    differ otherwise, also where rounding error leaves the product just below an integer
    (``L = 100, r = 0.9``: ``100 · (1 − 0.9) = 9.999…``, MAE keeps 9, ``"nearest"`` keeps 10).

    Examples:
        >>> kept_tokens(196, 0.75), kept_tokens(100, 0.9), kept_tokens(100, 0.9, rounding="floor")
        (49, 10, 9)
    """
    rule = check_choice("rounding", rounding, ("nearest", "floor"))
    product = length * (1.0 - mask_ratio)
    keep = round(product) if rule == "nearest" else int(product)
    if keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} leaves no visible token of L = {length}")
    return int(keep)


def random_masking(
    tokens: Tensor, mask_ratio: float, *, generator: torch.Generator | None = None, rounding: str = "nearest"
) -> MaskingResult:
    """Per-sample random masking by argsort of uniform noise (MAE).

    Each sample draws ``L`` uniform numbers; the tokens with the ``K = round(L·(1 − r))`` smallest
    are kept. Every sample keeps exactly ``K`` tokens, and each subset of ``K`` is equally likely.
    MAE keeps ``int(L·(1 − r))`` instead: ``rounding="floor"`` does the same (see
    :func:`kept_tokens` for when the two agree); with it and the same noise the result equals MAE's.

    Args:
        tokens: ``(N, L, D)`` patch tokens (position embeddings already added, as MAE does).
        mask_ratio: Fraction ``r ∈ [0, 1)`` of tokens to remove.
        generator: Optional ``torch.Generator`` for the noise (drawn on the generator's device and
            moved to ``tokens``'); ``None`` uses the global generator.
        rounding: ``"nearest"`` (``round``) or ``"floor"`` (MAE's ``int``) for ``K``.

    Returns:
        A :class:`MaskingResult` ``(visible, mask, ids_keep, ids_restore)``.

    Examples:
        >>> import torch
        >>> from qualcl.functional import random_masking
        >>> tokens = torch.randn(2, 16, 8)
        >>> out = random_masking(tokens, 0.75, generator=torch.Generator().manual_seed(0))
        >>> out.visible.shape, out.mask.sum(dim=1).tolist()
        (torch.Size([2, 4, 8]), [12.0, 12.0])
        >>> restored = torch.gather(torch.cat([out.visible, tokens[:, :12]], 1), 1,
        ...                         out.ids_restore[..., None].expand(-1, -1, 8))
        >>> torch.equal(restored[out.mask == 0], tokens[out.mask == 0])
        True

    Reference:
        He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (``random_masking``).
    """
    check_float_tensor("tokens", tokens)
    if tokens.ndim != 3 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must have shape (N, L, D) with L >= 1, got shape {tuple(tokens.shape)}")
    ratio = check_number("mask_ratio", mask_ratio, minimum=0.0, maximum=1.0)
    if ratio >= 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio!r}")
    n, length, dim = tokens.shape
    keep = kept_tokens(length, ratio, rounding=rounding)
    if generator is None:
        noise = torch.rand(n, length, device=tokens.device)
    else:
        noise = torch.rand(n, length, generator=generator, device=generator.device).to(tokens.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=tokens.device, dtype=tokens.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return MaskingResult(visible, mask, ids_keep, ids_restore)


def sincos_2d_position_embedding(dim: int, grid: int | tuple[int, int], *, class_token: bool = False) -> Tensor:
    r"""Fixed 2-D sine-cosine position embeddings in MAE's layout.

    The first ``dim / 2`` channels encode the column ``x``, the last ``dim / 2`` the row ``y``;
    each half is ``[sin(pos·ω), cos(pos·ω)]`` with ``ω_k = 10000^{-k / (dim/4)}``,
    ``k = 0 … dim/4 − 1`` (MAE's ``get_2d_sincos_pos_embed``).

    Args:
        dim: Embedding size, a multiple of 4.
        grid: Side of a square grid, or ``(rows, columns)``.
        class_token: Whether to prepend an all-zero row for the class token.

    Returns:
        ``(rows·columns (+1), dim)`` float32 embeddings, row-major over the grid.

    Examples:
        >>> from qualcl.functional import sincos_2d_position_embedding
        >>> sincos_2d_position_embedding(8, (2, 3), class_token=True).shape
        torch.Size([7, 8])
    """
    d = check_int("dim", dim)
    if d % 4:
        raise ValueError(f"dim must be a multiple of 4 for 2-D sin-cos embeddings, got {dim}")
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    rows, cols = check_int("grid rows", rows), check_int("grid columns", cols)
    omega = 1.0 / 10000.0 ** (torch.arange(d // 4, dtype=torch.float64) / (d / 4.0))
    y, x = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    out = torch.cat([encode(x), encode(y)], dim=1)
    if class_token:
        out = torch.cat([torch.zeros(1, d, dtype=out.dtype), out], dim=0)
    return out.float()


def masked_reconstruction_loss(
    pred: Tensor, target: Tensor, mask: Tensor, *, norm_pix_loss: bool = False, loss_on: str = "masked"
) -> Tensor:
    r"""MAE's per-patch mean squared error, averaged over the removed patches (or all patches).

    .. math::
        \ell_{nl} = \frac{1}{P}\sum_{k} (\hat x_{nlk} - t_{nlk})^2, \qquad
        \mathcal L = \frac{\sum_{n,l} m_{nl}\,\ell_{nl}}{\sum_{n,l} m_{nl}}
        \;\; (\texttt{loss\_on="masked"}), \qquad
        \mathcal L = \frac{1}{NL}\sum_{n,l} \ell_{nl} \;\; (\texttt{"all"})

    With ``norm_pix_loss`` each target patch is standardised first, ``t ← (t − μ) / \sqrt{σ² + 10^{-6}}``
    (its own mean and unbiased variance, as MAE). ``"all"`` is the whole-image MSE of the
    multimodal fundus paper's Eq. 4; ``"masked"`` is MAE's.

    Args:
        pred: ``(N, L, P)`` predicted patches.
        target: ``(N, L, P)`` true patches (``patchify(images, p)``).
        mask: ``(N, L)``, 1 = removed (the ``mask`` of :func:`random_masking`); with
            ``loss_on="masked"`` at least one patch must be removed. Non-binary weights are used
            as given.
        norm_pix_loss: Standardise each target patch.
        loss_on: ``"masked"`` or ``"all"``.

    Returns:
        A scalar.

    Examples:
        >>> import torch
        >>> from qualcl.functional import masked_reconstruction_loss
        >>> pred, target = torch.zeros(1, 4, 3), torch.ones(1, 4, 3)
        >>> mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
        >>> masked_reconstruction_loss(pred, target, mask).item()
        1.0

    Reference:
        He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (``forward_loss``).
    """
    check_choice("loss_on", loss_on, ("masked", "all"))
    per_patch = patch_errors(pred, target, mask, norm_pix_loss=norm_pix_loss)
    if loss_on == "all":
        return per_patch.mean()
    weights = mask.to(per_patch.dtype)
    total = weights.sum()
    if not torch.compiler.is_compiling() and float(total) <= 0:
        raise ValueError("mask removes no patch, so the masked-patch loss is undefined; use loss_on='all'")
    return (per_patch * weights).sum() / total


def patch_errors(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    norm_pix_loss: bool = False,
    names: tuple[str, str, str] = ("pred", "target", "mask"),
) -> Tensor:
    """Checked ``(N, L)`` per-patch mean squared errors, the terms of :func:`masked_reconstruction_loss`.

    ``pred`` and ``target`` are ``(N, L, P)`` finite float tensors, ``mask`` an ``(N, L)`` finite,
    non-negative tensor (bool, integer or float; checked here, not used); with ``norm_pix_loss`` each target patch is
    standardised first. ``names`` are the argument names the errors use.

    Examples:
        >>> import torch
        >>> patch_errors(torch.zeros(1, 2, 3), torch.ones(1, 2, 3), torch.ones(1, 2))
        tensor([[1., 1.]])
    """
    pred_name, target_name, mask_name = names
    check_float_tensor(pred_name, pred)
    check_float_tensor(target_name, target)
    if pred.ndim != 3 or 0 in pred.shape:
        raise ValueError(f"{pred_name} must have shape (N, L, P) with N, L, P >= 1, got shape {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"{target_name} must have {pred_name}'s shape {tuple(pred.shape)}, got {tuple(target.shape)}")
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(pred.shape[:2]):
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{mask_name} must have shape (N, L) = {tuple(pred.shape[:2])}, got {got}")
    for name, x in ((pred_name, pred), (target_name, target), (mask_name, mask)):
        if x.is_floating_point():
            check_finite(name, x)
    if not torch.compiler.is_compiling() and bool((mask < 0).any()):
        raise ValueError(f"{mask_name} must be >= 0 (1 = removed patch, or a soft weight), got min {float(mask.min())}")
    if norm_pix_loss:
        if target.shape[-1] < 2:
            raise ValueError("norm_pix_loss needs patches of at least 2 values to standardise")
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    return (pred - target).pow(2).mean(dim=-1)
