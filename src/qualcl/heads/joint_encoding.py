"""Joint-encoding masking: the meta learner's output restricted to a (diagnosis, quality) slice."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qualcl._validation import check_class_ids, check_features, check_finite, check_int, check_probability

__all__ = ["JointEncodingMask"]


class JointEncodingMask(nn.Module):
    r"""Masked softmax of MKCNet's meta learner onto the slice of the sample's joint label.

    The meta learner outputs ``K = L · N_d · N_q`` logits ``o``, read as ``N_j = N_d · N_q``
    consecutive slices of length ``L`` (one per joint label). For a sample with diagnosis ``y_d``
    and quality ``y_q`` the joint label and the auxiliary target are

    .. math::
        j = y_q \cdot N_d + y_d, \qquad
        y_\omega = \frac{\exp(o) \odot B_j}{\sum_k \exp(o_k) B_{j,k}}, \qquad
        B_{j,k} = \begin{cases} 1 & k \in [jL, (j+1)L) \\ \varepsilon & \text{otherwise} \end{cases}

    computed in the stable log form ``softmax(o + log B_j)`` (log-sum-exp with max subtraction; the
    official code exponentiates raw logits and can overflow). With ``eps = 0`` (default) all the
    probability mass lies on the slice and the entries outside are exactly 0; ``eps = 1e-8``
    reproduces the official mask. With ``L = 1`` the target is the one-hot joint label.

    Joint-label order: ``j = y_q · N_d + y_d`` (quality-major), as in the official dataset code
    (``label_M = IQ · NUM_T + T``) and ``docs/mkcnet.md`` ("Decisions"). The paper's 2 × 2 example lists the
    codes as ``y_{d,q} ∈ {00, 01, 10, 11}``, which would read diagnosis-major; the order only
    permutes the slices (the co-embedding head learns whichever order is used), and qualcl follows
    the code so that official checkpoints and split files map one to one.

    Args:
        num_diagnosis: ``N_d``, number of diagnosis classes.
        num_quality: ``N_q``, number of quality classes.
        slice_length: ``L``, length of each joint label's slice (``META_LENGTH``; EyeQ 5).
        eps: Mask value outside the slice, in ``[0, 1]`` (0: exact masking; 1e-8: official code).

    Shape:
        - ``logits``: ``(N, K)`` with ``K = L · N_d · N_q``; ``diagnosis``, ``quality``, ``joint``: ``(N,)``
          integer ids.
        - Output: ``(N, K)`` rows on the simplex; float32 for half/bfloat16 logits, else their dtype.

    Examples:
        >>> import torch
        >>> mask = JointEncodingMask(num_diagnosis=3, num_quality=3, slice_length=5)
        >>> y = mask(torch.randn(2, 45), torch.tensor([0, 2]), torch.tensor([1, 2]))
        >>> mask.encode(torch.tensor([0, 2]), torch.tensor([1, 2]))
        tensor([3, 8])
        >>> round(y[0, 15:20].sum().item(), 6), y[0, :15].sum().item()
        (1.0, 0.0)

    Reference:
        Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding" (MKCNet), CVPR 2023,
        Eq. 2; masked softmax of Liu et al., "Self-Supervised Generalisation with Meta Auxiliary
        Learning" (MAXL), NeurIPS 2019.
    """

    def __init__(self, num_diagnosis: int, num_quality: int, slice_length: int, *, eps: float = 0.0) -> None:
        super().__init__()
        self.num_diagnosis = check_int("num_diagnosis", num_diagnosis)
        self.num_quality = check_int("num_quality", num_quality)
        self.slice_length = check_int("slice_length", slice_length)
        self.eps = check_probability("eps", eps)

    @property
    def num_joint(self) -> int:
        """Number of joint labels ``N_j = N_d · N_q``."""
        return self.num_diagnosis * self.num_quality

    @property
    def num_outputs(self) -> int:
        """Length ``K = L · N_d · N_q`` of the meta learner's output."""
        return self.slice_length * self.num_joint

    def extra_repr(self) -> str:
        """Summarise the sizes for ``print(module)``."""
        return (
            f"num_diagnosis={self.num_diagnosis}, num_quality={self.num_quality}, "
            f"slice_length={self.slice_length}, eps={self.eps}"
        )

    def encode(self, diagnosis: Tensor, quality: Tensor) -> Tensor:
        """Return the joint labels ``j = quality · N_d + diagnosis`` (``(N,)`` int64)."""
        check_class_ids("diagnosis", diagnosis, self.num_diagnosis)
        check_class_ids("quality", quality, self.num_quality, n=diagnosis.shape[0])
        return quality.long() * self.num_diagnosis + diagnosis.long()

    def decode(self, joint: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(diagnosis, quality)`` for joint labels ``(N,)``: the inverse of :meth:`encode`."""
        check_class_ids("joint", joint, self.num_joint)
        joint = joint.long()
        return joint % self.num_diagnosis, joint // self.num_diagnosis

    def mask(self, joint: Tensor) -> Tensor:
        """Return the ``(N, K)`` boolean mask, true on positions ``[j·L, (j+1)·L)`` of each row."""
        check_class_ids("joint", joint, self.num_joint)
        return self._mask(joint)

    def _mask(self, joint: Tensor) -> Tensor:
        slot = torch.arange(self.num_outputs, device=joint.device) // self.slice_length
        return slot[None, :] == joint.long()[:, None]

    def log_prob(self, logits: Tensor, joint: Tensor) -> Tensor:
        """Return ``log y_ω`` ``(N, K)`` for ``logits`` ``(N, K)`` and joint labels ``(N,)``.

        Entries outside the slice are ``-inf`` when ``eps = 0``.
        """
        check_features("logits", logits, self.num_outputs)
        check_finite("logits", logits)
        check_class_ids("joint", joint, self.num_joint, n=logits.shape[0])
        dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
        outside = math.log(self.eps) if self.eps > 0 else -math.inf
        shift = torch.where(self._mask(joint), 0.0, outside).to(dtype)
        return torch.log_softmax(logits.to(dtype) + shift, dim=1)

    def masked_softmax(self, logits: Tensor, joint: Tensor) -> Tensor:
        """Return the target ``y_ω`` ``(N, K)`` for ``logits`` ``(N, K)`` and joint labels ``(N,)``."""
        return self.log_prob(logits, joint).exp()

    def forward(self, logits: Tensor, diagnosis: Tensor, quality: Tensor) -> Tensor:
        """Return ``y_ω`` ``(N, K)`` for ``logits`` ``(N, K)`` and diagnosis / quality ids ``(N,)``."""
        return self.masked_softmax(logits, self.encode(diagnosis, quality))
