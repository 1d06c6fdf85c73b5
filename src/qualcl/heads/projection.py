"""``ProjectionHead``: the MLP between an encoder and a contrastive loss."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from qualcl._validation import check_batch_statistics, check_features, check_int

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """``Linear → [BatchNorm] → ReLU → … → Linear``, output optionally L2-normalised.

    Args:
        dims: Layer widths from input to output, e.g. ``(2048, 2048, 128)`` (CoMCL, SimCLR).
        batch_norm: BatchNorm after each hidden Linear.
        normalize: L2-normalise the output.

    Shape:
        - Input ``(N, dims[0])``; output ``(N, dims[-1])``.

    Examples:
        >>> import torch
        >>> head = ProjectionHead((512, 512, 128))
        >>> z = head(torch.randn(4, 512))
        >>> z.shape, bool(torch.allclose(z.norm(dim=1), torch.ones(4)))
        (torch.Size([4, 128]), True)

    Reference:
        Chen et al., SimCLR, 2020; CoMCL (Hou et al., MICCAI 2024) uses Linear(2048, 2048)–ReLU–Linear(2048, 128).
    """

    def __init__(self, dims: Sequence[int], *, batch_norm: bool = False, normalize: bool = True) -> None:
        super().__init__()
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or len(dims) < 2:
            raise ValueError(f"dims must list at least two layer widths (input, ..., output), got {dims!r}")
        widths = [check_int(f"dims[{i}]", d) for i, d in enumerate(dims)]  # 8.7 is refused, not truncated
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        self.dims = tuple(widths)
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        """Project ``(N, D_in)`` features to ``(N, D_out)``."""
        check_features("x", x, self.dims[0])
        check_batch_statistics("x", x, self)
        z: Tensor = self.net(x)
        return F.normalize(z, dim=1) if self.normalize else z
