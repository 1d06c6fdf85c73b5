"""MKCNet's meta-knowledge assistance block (MAB): gate the co-embedding feature, join it to diagnosis."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qualcl._validation import check_features, check_int
from qualcl.heads.cbam import ChannelGate

__all__ = ["MetaKnowledgeAssistanceBlock"]


class MetaKnowledgeAssistanceBlock(nn.Module):
    r"""``f^{d*} = [f^d, g(f^ω) ⊙ f^ω]``: filter the co-embedding channels, then concatenate.

    The paper's "filter and utilise" step: a channel gate ``g`` (CBAM's, without the spatial part)
    removes the channels of the knowledge co-embedding feature ``f^ω`` that do not help diagnosis,
    and the gated feature is concatenated *after* the diagnosis feature ``f^d``. The official code
    applies ``CBAM(256, no_spatial=True)`` to ``f^ω`` reshaped to ``(N, 256, 1, 1)``; on a ``1 × 1``
    map average and max pooling coincide, so with the default pools the gate is
    ``sigmoid(2 · MLP(f^ω))``, reproduced here exactly. (The official *fast-weight* path used for the
    meta step instead returns the raw MLP output; qualcl evaluates this module everywhere.)

    Args:
        co_embedding_dim: Width ``D_ω`` of ``f^ω`` (256 in MKCNet).
        reduction: Channel-MLP reduction ratio (16).
        pool_types: Channel-gate pools, subset of ``("avg", "max")`` (both, as the official code).

    Shape:
        - ``diagnosis_feature``: ``(N, D_d)``; ``co_embedding``: ``(N, D_ω)``.
        - Output: ``(N, D_d + D_ω)``, dtype of the inputs.
        - :meth:`gate`: ``(N, D_ω)`` in ``[0, 1]``.

    Examples:
        >>> import torch
        >>> mab = MetaKnowledgeAssistanceBlock(256)
        >>> mab(torch.randn(4, 256), torch.randn(4, 256)).shape
        torch.Size([4, 512])

    Reference:
        Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding" (MKCNet), CVPR 2023,
        §3.2.1 "Meta-knowledge assistance block"; Woo et al., "CBAM", ECCV 2018 (channel gate).
    """

    def __init__(
        self, co_embedding_dim: int, *, reduction: int = 16, pool_types: Sequence[str] = ("avg", "max")
    ) -> None:
        super().__init__()
        check_int("co_embedding_dim", co_embedding_dim)
        self.channel_gate = ChannelGate(co_embedding_dim, reduction, pool_types)

    @property
    def co_embedding_dim(self) -> int:
        """Width ``D_ω`` of the co-embedding feature."""
        return self.channel_gate.channels

    def gate(self, co_embedding: Tensor) -> Tensor:
        """Return the channel gate ``(N, D_ω)`` in ``[0, 1]`` for ``co_embedding`` ``(N, D_ω)``."""
        check_features("co_embedding", co_embedding, self.co_embedding_dim)
        return self.channel_gate.gate(co_embedding[:, :, None, None])

    def forward(self, diagnosis_feature: Tensor, co_embedding: Tensor) -> Tensor:
        """Concatenate ``diagnosis_feature`` ``(N, D_d)`` with the gated ``co_embedding`` ``(N, D_ω)``."""
        check_features("diagnosis_feature", diagnosis_feature)
        check_features("co_embedding", co_embedding, self.co_embedding_dim)
        if co_embedding.shape[0] != diagnosis_feature.shape[0]:
            raise ValueError(
                f"co_embedding must have as many rows as diagnosis_feature ({diagnosis_feature.shape[0]}), "
                f"got shape {tuple(co_embedding.shape)}"
            )
        gated = co_embedding * self.gate(co_embedding)
        return torch.cat([diagnosis_feature, gated], dim=1)
