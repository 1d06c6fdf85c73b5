"""MKCNet's meta learner / MAXL's label generator: backbone + MLP + joint-encoding masked softmax."""

from __future__ import annotations

from torch import Tensor, nn

from qualcl._validation import check_int, check_probability
from qualcl.heads.joint_encoding import JointEncodingMask

__all__ = ["MetaLabelGenerator"]


class MetaLabelGenerator(nn.Module):
    """Generate the auxiliary target ``y_ω = B_j(MLP(backbone(x)))`` for each sample.

    ``backbone(x)`` gives features (``(N, F)``, or ``(N, F, 1, 1)`` / any shape that flattens to ``F``
    per sample), the MLP ``Linear(F, H) → ReLU → Linear(H, K)`` gives ``K = L · N_d · N_q`` logits
    (:meth:`logits`), and :class:`JointEncodingMask` turns them into a distribution supported on
    the slice of the sample's joint label ``j = y_q · N_d + y_d``. In MKCNet the backbone is a
    VGG-16-BN with its own weights (not shared with the Task Net) and ``H = F = 512``.

    Args:
        backbone: Module mapping the input batch to per-sample features of size ``feature_dim``.
        feature_dim: ``F``, the backbone's flattened feature size.
        num_diagnosis: ``N_d``.
        num_quality: ``N_q``.
        slice_length: ``L`` (``META_LENGTH``).
        hidden_dim: ``H``; defaults to ``feature_dim`` as in MKCNet and MAXL.
        eps: Mask value outside the slice (0 exact; 1e-8 as the official code).

    Shape:
        - ``x``: whatever ``backbone`` takes, batch first; ``diagnosis``, ``quality``: ``(N,)`` ids.
        - Output: ``(N, K)`` rows on the simplex, zero outside the joint slice when ``eps = 0``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> generator = MetaLabelGenerator(backbone, 8, num_diagnosis=3, num_quality=2, slice_length=4)
        >>> diagnosis, quality = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 0, 1, 1, 1])
        >>> generator(torch.randn(5, 3, 16, 16), diagnosis, quality).shape
        torch.Size([5, 24])

    Reference:
        Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding" (MKCNet), CVPR 2023,
        §3.2.2 (Meta Learner); Liu et al., "Self-Supervised Generalisation with Meta Auxiliary
        Learning" (MAXL), NeurIPS 2019 (label generator).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_diagnosis: int,
        num_quality: int,
        slice_length: int,
        *,
        hidden_dim: int | None = None,
        eps: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
        self.feature_dim = check_int("feature_dim", feature_dim)
        hidden = feature_dim if hidden_dim is None else check_int("hidden_dim", hidden_dim)
        self.backbone = backbone
        eps = check_probability("eps", eps)
        self.joint_mask = JointEncodingMask(num_diagnosis, num_quality, slice_length, eps=eps)
        self.classifier = nn.Sequential(
            nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, self.joint_mask.num_outputs)
        )

    @property
    def num_outputs(self) -> int:
        """Length ``K = L · N_d · N_q`` of the generated targets."""
        return self.joint_mask.num_outputs

    def logits(self, x: Tensor) -> Tensor:
        """Return the unmasked ``(N, K)`` logits ``o = MLP(backbone(x))``."""
        features: Tensor = self.backbone(x)
        if not isinstance(features, Tensor) or features.ndim < 1:
            raise TypeError(f"backbone must return a batch-first tensor, got {type(features).__name__}")
        features = features.flatten(1) if features.ndim > 1 else features[:, None]
        if features.shape[1] != self.feature_dim:
            got, want = features.shape[1], self.feature_dim
            raise ValueError(f"backbone features flatten to {got} per sample, but feature_dim is {want}")
        out: Tensor = self.classifier(features)
        return out

    def forward(self, x: Tensor, diagnosis: Tensor, quality: Tensor) -> Tensor:
        """Return ``y_ω`` ``(N, K)`` for inputs ``x`` and diagnosis / quality ids ``(N,)``."""
        target: Tensor = self.joint_mask(self.logits(x), diagnosis, quality)
        return target
