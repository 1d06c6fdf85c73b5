"""``ProjectionHead``: the MLP between an encoder and a contrastive loss."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """``Linear → [BatchNorm] → ReLU → … → Linear``, output optionally L2-normalised.

    Args:
        dims: Layer widths from input to output, e.g. ``(2048, 2048, 128)`` (CoMCL, SimCLR).
        batch_norm: BatchNorm after each hidden Linear.
        normalize: L2-normalise the output.

    Shape:
        - Input ``(N, dims[0])``; output ``(N, dims[-1])``.

    Example:
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
        widths = [int(d) for d in dims]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"dims must list at least two positive widths, got {list(dims)}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        """Project ``(N, D_in)`` features to ``(N, D_out)``."""
        z: Tensor = self.net(x)
        return F.normalize(z, dim=1) if self.normalize else z
