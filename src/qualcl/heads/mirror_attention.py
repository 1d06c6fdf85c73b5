"""Mirror attention: non-local attention from a fundus feature map to its mirrors' (Fang et al., BSPC 2023)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl._validation import check_choice, check_feature_map, check_int

__all__ = ["MirrorAttention", "MirrorAttentionOutput"]


class MirrorAttentionOutput(NamedTuple):
    """Outputs of :class:`MirrorAttention`.

    Attributes:
        horizontal: ``(N, C, H, W)`` output of the horizontal-mirror branch.
        vertical: ``(N, C, H, W)`` output of the vertical-mirror branch.
        attention_h: ``(N, HW, HW)`` affinity of the horizontal branch (rows sum to 1), or ``None``.
        attention_v: ``(N, HW, HW)`` affinity of the vertical branch, or ``None``.
    """

    horizontal: Tensor
    vertical: Tensor
    attention_h: Tensor | None
    attention_v: Tensor | None


def _embedding(channels: int, mid: int) -> nn.Sequential:
    conv = nn.Conv2d(channels, mid, 1)
    nn.init.kaiming_normal_(conv.weight)
    nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
    return nn.Sequential(conv, nn.BatchNorm2d(mid), nn.ReLU())


def _value(channels: int, mid: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, mid, 1)
    nn.init.kaiming_normal_(conv.weight)
    nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
    return conv


def _output(mid: int, channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(mid, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
    return conv


class MirrorAttention(nn.Module):
    r"""Non-local attention from an image's feature map to the feature maps of its two mirrors.

    Left and right eyes are mirror images (the optic disc swaps sides) and the macula lies on the
    central axis, so a fundus image is compared with its horizontal and vertical mirrors. For each
    mirror ``m ∈ {h, v}``, with ``q = f_a(x)``, ``k = f_m(x_m)`` (1×1 conv–BN–ReLU to ``mid = C / r``
    channels, flattened over the ``L = HW`` positions) and values ``g_m(x)`` (1×1 conv of the image's
    own map, as in the public code):

    * ``variant="intended"`` (qualcl's reading of the paper; the paper's text is not public):
      each position ``j`` of the image attends to every position ``i`` of the mirror,

      .. math::
          A_{ji} = \operatorname{softmax}_i\big(q_j^\top k_i / \sqrt{mid}\big), \qquad
          y = x + W_m\Big(\sum_i A_{ji}\, g_m(x)_i\Big)

      (``torch.nn.functional.scaled_dot_product_attention``; the ``L × L`` matrix is only formed
      when ``return_attention=True``). The value at ``i`` is weighted by how much the *mirror's*
      content at ``i`` — the image's content at the mirrored position — resembles ``j``, which
      couples each position with its mirror image; with values taken from the mirror instead, the
      attention would not depend on where the mirror's features sit (a softmax over all key
      positions is invariant to permuting them), i.e. a flipped map would give plain attention.
    * ``variant="official"`` reproduces the public FundusDR code (``nets/MANet.py``) exactly:
      ``A = softmax_{\text{last}}(k^\top q / \sqrt{mid})`` of shape ``(mirror positions,
      image positions)`` — the softmax runs over the *image* (output) positions — and
      ``y = x + W_m(g_m(x) A)``; the horizontal mirror is embedded with ``f_v``'s weights (``f_h``
      is unused), and the network passes the image itself as the vertical input
      (``self.ma(xa5, xh5, xa5)``), so here the vertical branch's keys come from ``x`` and ``x_v``
      is ignored: that branch is self-attention.

    ``W_m`` (``f_ah``, ``f_av``) are zero-initialised, so the block returns its input at
    initialisation and can be dropped into a pretrained network. Layer names follow the public
    code, so its weights map one to one.

    Args:
        channels: Channels ``C`` of the feature maps.
        reduction: ``r``: the embeddings have ``C / r`` channels (the public code: 2).
        variant: ``"intended"`` or ``"official"``.

    Shape:
        - ``x``, ``x_h``, ``x_v``: ``(N, C, H, W)``; when a mirror is ``None`` it is ``x`` flipped
          (over ``W`` for ``x_h``, over ``H`` for ``x_v``) — the mirror of the feature map, one
          encoder pass; pass the encoder's features of the flipped image for the paper's setting.
        - Output: :class:`MirrorAttentionOutput` with two ``(N, C, H, W)`` maps.

    Examples:
        >>> import torch
        >>> block = MirrorAttention(16, reduction=2)
        >>> x = torch.rand(2, 16, 4, 5)
        >>> out = block(x, return_attention=True)
        >>> torch.equal(out.horizontal, x), tuple(out.attention_h.shape)
        (True, (2, 20, 20))

    Reference:
        Fang et al., "Deep metric learning with mirror attention and fine triplet loss for fundus
        image retrieval in ophthalmology", BSPC 2023 (public code: github.com/fjssharpsword/FundusDR);
        Wang et al., "Non-local Neural Networks", CVPR 2018.
    """

    def __init__(self, channels: int, reduction: int = 2, variant: str = "intended") -> None:
        super().__init__()
        self.channels = check_int("channels", channels)
        self.reduction = check_int("reduction", reduction)
        if channels % reduction:
            raise ValueError(f"channels ({channels}) must be divisible by reduction ({reduction})")
        self.variant = check_choice("variant", variant, ("intended", "official"))
        self.mid = channels // reduction
        self.f_a = _embedding(channels, self.mid)
        self.f_h = _embedding(channels, self.mid)
        self.f_v = _embedding(channels, self.mid)
        self.g_ah = _value(channels, self.mid)
        self.g_av = _value(channels, self.mid)
        self.f_ah = _output(self.mid, channels)
        self.f_av = _output(self.mid, channels)

    def extra_repr(self) -> str:
        """Constructor arguments shown in ``repr``."""
        return f"channels={self.channels}, reduction={self.reduction}, variant={self.variant!r}"

    def _branch(
        self, x: Tensor, query: Tensor, key: Tensor, value: nn.Conv2d, out: nn.Conv2d, with_attention: bool
    ) -> tuple[Tensor, Tensor | None]:
        n, _, h, w = x.shape
        q = query.flatten(2)  # (N, mid, L)
        k = key.flatten(2)
        g = value(x).flatten(2)
        scale = self.mid**-0.5
        if self.variant == "official":
            attention = torch.softmax(scale * torch.bmm(k.transpose(1, 2), q), dim=-1)  # (N, L_mirror, L_image)
            mixed = torch.bmm(g, attention)
            return out(mixed.view(n, self.mid, h, w)) + x, attention if with_attention else None
        if with_attention:
            attention = torch.softmax(scale * torch.bmm(q.transpose(1, 2), k), dim=-1)  # (N, L_image, L_mirror)
            mixed = torch.bmm(attention, g.transpose(1, 2))
        else:
            mixed = F.scaled_dot_product_attention(
                q.transpose(1, 2).unsqueeze(1), k.transpose(1, 2).unsqueeze(1), g.transpose(1, 2).unsqueeze(1)
            ).squeeze(1)
            return out(mixed.transpose(1, 2).reshape(n, self.mid, h, w)) + x, None
        return out(mixed.transpose(1, 2).reshape(n, self.mid, h, w)) + x, attention

    def forward(
        self,
        x: Tensor,
        x_h: Tensor | None = None,
        x_v: Tensor | None = None,
        *,
        return_attention: bool = False,
    ) -> MirrorAttentionOutput:
        """Attend from ``x`` to its horizontal and vertical mirrors; see the class docstring."""
        check_feature_map("x", x, channels=self.channels)
        for name, mirror in (("x_h", x_h), ("x_v", x_v)):
            if mirror is not None:
                check_feature_map(name, mirror, channels=self.channels)
                if mirror.shape != x.shape:
                    raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(mirror.shape)}")
        x_h = x.flip(3) if x_h is None else x_h
        x_v = x.flip(2) if x_v is None else x_v
        query = self.f_a(x)
        if self.variant == "official":
            key_h, key_v = self.f_v(x_h), self.f_v(x)
        else:
            key_h, key_v = self.f_h(x_h), self.f_v(x_v)
        y_h, a_h = self._branch(x, query, key_h, self.g_ah, self.f_ah, return_attention)
        y_v, a_v = self._branch(x, query, key_v, self.g_av, self.f_av, return_attention)
        return MirrorAttentionOutput(y_h, y_v, a_h, a_v)
