"""Vision transformers on timm's ``VisionTransformer``, with the :class:`~qualcl.models.Encoder` contract."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl.models.encoder import Encoder
from qualcl.models.registry import register_encoder

__all__ = ["CONV_STEM_VITS", "VIT_SIZES", "ConvStem", "ViTEncoder", "vit_encoder"]

#: ``name: (embed_dim, depth, num_heads)`` of the patch-16 ViTs (Dosovitskiy et al.; DeiT's tiny/small).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_micro": (64, 2, 2),
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}

#: ``name: (embed_dim, depth, num_heads, patch_size)`` of the ViTs with a convolutional stem.
CONV_STEM_VITS: dict[str, tuple[int, int, int, int]] = {
    "convvit_tiny": (192, 6, 3, 8),
}


class ConvStem(nn.Module):
    """Early convolutions for a ViT: ``log2(p)`` 3×3 stride-2 conv–BN–ReLU stages, then a 1×1 projection.

    ``forward(x, keep=None)`` maps ``(N, C, H, W)`` images to ``(N, D, H/p, W/p)`` patch tokens. With
    ``keep`` (``(N, H/p, W/p)``, true = visible patch) the pixels of removed patches are zeroed
    before the first convolution and every stage's output is multiplied by the keep mask at its
    resolution (ConvMAE's masked convolution): nothing of a removed patch reaches any token, so the
    stem can be masked like a patch embedding although its receptive fields overlap. It replaces the
    ``proj`` of timm's ``PatchEmbed``.

    Args:
        patch_size: Total stride ``p`` (a power of two, at least 2).
        in_chans: Input channels.
        embed_dim: Token width ``D``.
        widths: Channels of the stages (default 32, 64, 128, … capped at ``embed_dim``).

    Examples:
        >>> import torch
        >>> stem = ConvStem(8, 3, 192)
        >>> stem(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 192, 8, 8])

    Reference:
        Xiao et al., "Early Convolutions Help Transformers See Better", NeurIPS 2021; Gao et al.,
        "ConvMAE: Masked Convolution Meets Masked Autoencoders", NeurIPS 2022 (the masking).
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, widths: Sequence[int] | None = None) -> None:
        super().__init__()
        stages = int(patch_size).bit_length() - 1
        if patch_size < 2 or 2**stages != patch_size:
            raise ValueError(f"a convolutional stem needs a power-of-two patch size >= 2, got {patch_size}")
        widths = [min(embed_dim, 32 * 2**i) for i in range(stages)] if widths is None else list(widths)
        if len(widths) != stages:
            raise ValueError(f"widths must give {stages} stage widths for patch size {patch_size}, got {widths}")
        self.patch_size = int(patch_size)
        chans = [in_chans, *widths]
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1, bias=False), nn.BatchNorm2d(chans[i + 1]), nn.ReLU()
            )
            for i in range(stages)
        )
        self.proj = nn.Conv2d(chans[-1], embed_dim, 1)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """``(N, C, H, W)`` → ``(N, D, H/p, W/p)``; ``keep`` ``(N, H/p, W/p)`` masks removed patches out."""
        mask = None
        if keep is not None:
            mask = keep.to(x.dtype).unsqueeze(1)
            x = x * F.interpolate(mask, size=x.shape[-2:], mode="nearest")
        for stage in self.stages:
            x = stage(x)
            if mask is not None:
                x = x * F.interpolate(mask, size=x.shape[-2:], mode="nearest")
        out: Tensor = self.proj(x)
        return out


class ViTEncoder(Encoder):
    """A timm ``VisionTransformer`` (class token, learned absolute position embeddings, no classifier).

    * ``forward`` → ``(N, D)``: the class token after the final norm.
    * ``forward_features`` → ``(N, 1 + L, D)``: every token after the final norm, class token first.
    * ``forward_masked(x, keep_index)`` → ``(N, 1 + L_keep, D)``: embeds all patches, keeps the
      visible ones (``keep_index``, e.g. from MAE's random masking) *after* adding their position
      embeddings, prepends the class token and runs the blocks on those tokens only — MAE's encoder.
    * ``forward_pyramid`` → four ``(N, D, H/p, W/p)`` maps from evenly spaced blocks (ViTDet's plain
      backbone; a dense head resamples them).

    Position embeddings are interpolated (bicubic, timm's ``resample_abs_pos_embed``) for any image
    size divisible by the patch size; ``num_patches`` refers to ``image_size``.

    Args:
        net: A timm ``VisionTransformer`` with a class token and ``dynamic_img_size=True``.
        image_size: The side the position embeddings were made for.

    Examples:
        >>> import torch
        >>> encoder = vit_encoder("vit_tiny", image_size=64)
        >>> x = torch.randn(2, 3, 64, 64)
        >>> encoder(x).shape, encoder.forward_features(x).shape, encoder.num_patches
        (torch.Size([2, 192]), torch.Size([2, 17, 192]), 16)
        >>> keep = torch.tensor([[0, 5, 9, 15], [1, 2, 3, 4]])
        >>> encoder.forward_masked(x, keep).shape
        torch.Size([2, 5, 192])

    Reference:
        Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021; He et al., "Masked
        Autoencoders Are Scalable Vision Learners", CVPR 2022 (``forward_masked``).
    """

    is_vit = True

    def __init__(self, net: Any, image_size: int) -> None:
        super().__init__()
        if getattr(net, "cls_token", None) is None or not getattr(net, "dynamic_img_size", False):
            raise ValueError("ViTEncoder needs a timm VisionTransformer with a class token and dynamic_img_size=True")
        self.net = net
        self.image_size = int(image_size)
        self.patch_size = int(net.patch_embed.patch_size[0])
        self.num_features = int(net.embed_dim)
        depth = len(net.blocks)
        self._taps = tuple(sorted({max(0, round(depth * k / 4) - 1) for k in (1, 2, 3, 4)}))
        self.pyramid_channels = (self.num_features,) * len(self._taps)
        self.pyramid_reductions = (self.patch_size,) * len(self._taps)

    @property
    def num_patches(self) -> int:
        """Patches ``L`` of an ``image_size`` input."""
        return (self.image_size // self.patch_size) ** 2

    def _check(self, x: Tensor) -> tuple[int, int]:
        if x.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {self.patch_size}")
        return h // self.patch_size, w // self.patch_size

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` → ``(N, 1 + L, D)`` normalised tokens, class token first."""
        self._check(x)
        out: Tensor = self.net.forward_features(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` → ``(N, D)`` class token."""
        return self.forward_features(x)[:, 0]

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """Four ``(N, D, H/p, W/p)`` maps of evenly spaced blocks (not normalised)."""
        self._check(x)
        maps: list[Tensor] = self.net.forward_intermediates(
            x, indices=list(self._taps), output_fmt="NCHW", intermediates_only=True
        )
        return maps

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """``(1, 1 + h·w, D)`` position embeddings (class position first) for a ``grid`` of patches."""
        from timm.layers.pos_embed import resample_abs_pos_embed

        old = self.image_size // self.patch_size
        if grid == (old, old):
            pos: Tensor = self.net.pos_embed
            return pos
        resampled: Tensor = resample_abs_pos_embed(
            self.net.pos_embed, new_size=list(grid), old_size=[old, old], num_prefix_tokens=1
        )
        return resampled

    def forward_masked(self, x: Tensor, keep_index: Tensor) -> Tensor:
        """Encode only the visible patches.

        Args:
            x: ``(N, C, H, W)`` images.
            keep_index: ``(N, L_keep)`` long indices of the visible patches in row-major patch order
                (``ids_keep`` of :func:`qualcl.functional.random_masking`).

        Returns:
            ``(N, 1 + L_keep, D)`` normalised tokens, class token first, in ``keep_index`` order.
        """
        grid = self._check(x)
        n, total = x.shape[0], grid[0] * grid[1]
        if keep_index.ndim != 2 or keep_index.shape[0] != n:
            raise ValueError(f"keep_index must be (N={n}, L_keep), got shape {tuple(keep_index.shape)}")
        if keep_index.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"keep_index must be an integer tensor, got {keep_index.dtype}")
        if keep_index.numel() and (int(keep_index.min()) < 0 or int(keep_index.max()) >= total):
            raise ValueError(f"keep_index must lie in [0, {total}) for a {grid[0]}x{grid[1]} patch grid")
        net = self.net
        pos = self.position_embedding(grid)
        stem = net.patch_embed.proj
        if isinstance(stem, ConvStem):  # overlapping receptive fields: mask the removed patches inside the stem
            keep = torch.zeros(n, total, dtype=torch.bool, device=x.device).scatter_(1, keep_index.long(), True)
            maps = stem(x, keep.view(n, *grid))
            embedded = net.patch_embed.norm(maps.permute(0, 2, 3, 1))
        else:
            embedded = net.patch_embed(x)
        tokens = embedded.reshape(n, total, -1) + pos[:, 1:]
        index = keep_index.long().unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        visible = torch.gather(tokens, 1, index)
        cls = (net.cls_token + pos[:, :1]).expand(n, -1, -1)
        out = net.norm_pre(net.pos_drop(torch.cat([cls, visible], dim=1)))
        out = net.norm(net.blocks(out))
        result: Tensor = out
        return result

    def backbone_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A timm ViT state dict without its head, position embeddings and patch conv adapted to this encoder."""
        from timm.layers.pos_embed import resample_abs_pos_embed
        from timm.models import adapt_input_conv

        own = self.net.state_dict()
        out = {k: v for k, v in state.items() if k in own or not k.startswith(("head.", "fc_norm."))}
        pos = out.get("pos_embed")
        if pos is not None and pos.shape != self.net.pos_embed.shape:
            old = round((pos.shape[1] - 1) ** 0.5)
            side = self.image_size // self.patch_size
            out["pos_embed"] = resample_abs_pos_embed(
                pos, new_size=[side, side], old_size=[old, old], num_prefix_tokens=1
            )
        conv = out.get("patch_embed.proj.weight")
        chans = self.net.patch_embed.proj.in_channels
        if conv is not None and conv.shape[1] != chans:
            out["patch_embed.proj.weight"] = adapt_input_conv(chans, conv.to(torch.float32))
        return out


def vit_encoder(name: str, *, in_chans: int = 3, image_size: int | None = None) -> ViTEncoder:
    """A randomly initialised ViT for ``image_size`` inputs.

    ``vit_tiny``, ``vit_small``, ``vit_base``: patch 16 (:data:`VIT_SIZES`); ``convvit_tiny``: a
    :class:`ConvStem` of stride 8 under six blocks of width 192 (:data:`CONV_STEM_VITS`; at 64 px
    it learns the synthetic DR grades supervised where the patch-16 ViTs stay at chance).
    ``image_size`` defaults to 224 and must be divisible by the patch size; other such sizes work
    too at run time (interpolated position embeddings).
    """
    from timm.models.vision_transformer import VisionTransformer

    if name not in VIT_SIZES and name not in CONV_STEM_VITS:
        raise ValueError(f"unknown ViT {name!r}; choose one of {sorted([*VIT_SIZES, *CONV_STEM_VITS])}")
    dim, depth, heads, patch = CONV_STEM_VITS[name] if name in CONV_STEM_VITS else (*VIT_SIZES[name], 16)
    size = 224 if image_size is None else int(image_size)
    if size < patch or size % patch:
        raise ValueError(f"image_size must be a positive multiple of the patch size {patch}, got {image_size}")
    net = VisionTransformer(
        img_size=size,
        patch_size=patch,
        in_chans=in_chans,
        num_classes=0,
        global_pool="token",
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        dynamic_img_size=True,
    )
    if name in CONV_STEM_VITS:
        net.patch_embed.proj = ConvStem(patch, in_chans, dim)
    return ViTEncoder(net, size)


# The registered names (``qualcl.models.create_encoder``); ``image_size`` sizes the position embeddings.


@register_encoder("vit_micro", family="vit", num_features=64, description="ViT/16 of width 64, 2 blocks (0.1 M; smoke)")
def _vit_micro(*, in_chans: int = 3, image_size: int | None = None) -> ViTEncoder:
    return vit_encoder("vit_micro", in_chans=in_chans, image_size=image_size)


@register_encoder("vit_tiny", family="vit", num_features=192, description="ViT-Ti/16 on timm (5.5 M)")
def _vit_tiny(*, in_chans: int = 3, image_size: int | None = None) -> ViTEncoder:
    return vit_encoder("vit_tiny", in_chans=in_chans, image_size=image_size)


@register_encoder("vit_small", family="vit", num_features=384, description="ViT-S/16 on timm (21.6 M)")
def _vit_small(*, in_chans: int = 3, image_size: int | None = None) -> ViTEncoder:
    return vit_encoder("vit_small", in_chans=in_chans, image_size=image_size)


@register_encoder("vit_base", family="vit", num_features=768, description="ViT-B/16 on timm (85.7 M)")
def _vit_base(*, in_chans: int = 3, image_size: int | None = None) -> ViTEncoder:
    return vit_encoder("vit_base", in_chans=in_chans, image_size=image_size)


@register_encoder(
    "convvit_tiny",
    family="vit",
    num_features=192,
    description="conv stem (stride 8) + 6 ViT blocks of width 192, maskable (2.8 M)",
)
def _convvit_tiny(*, in_chans: int = 3, image_size: int | None = None) -> ViTEncoder:
    return vit_encoder("convvit_tiny", in_chans=in_chans, image_size=image_size)
