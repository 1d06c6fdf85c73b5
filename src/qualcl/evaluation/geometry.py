"""Collapse diagnostics of a representation: effective rank and within/between-group cosines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import check_features, check_labels
from qualcl.evaluation.collapse import effective_rank

__all__ = ["feature_geometry"]


def feature_geometry(features: Tensor, groups: Tensor) -> dict[str, float]:
    """Collapse diagnostics of ``(N, D)`` features grouped by ``(N,)`` integer ids (levels, classes).

    Features are centred on their mean first (ReLU features are all positive, which makes raw
    cosines uninformative).

    * ``effective_rank``: ``exp(H(p))`` with ``p`` the normalised singular values of the centred
      features (Roy & Vetterli 2007; RankMe, Garrido et al. 2023). ``D`` for isotropic features, 1 for
      features on a line.
    * ``within_level_cosine`` / ``between_level_cosine``: mean cosine of the centred features over
      pairs of distinct samples of the same / of different groups (``nan`` when there is no such
      pair). A loss without same-group negatives (CoMCL's Eq. 1) is minimised by features that
      encode the group and little else: within → 1.

    Examples:
        >>> import torch
        >>> levels = torch.tensor([0, 0, 1, 1])
        >>> out = feature_geometry(torch.eye(2, dtype=torch.float64)[levels], levels)
        >>> round(out["within_level_cosine"], 3), round(out["between_level_cosine"], 3)
        (1.0, -1.0)
    """
    check_features("features", features)
    check_labels("groups", groups, features.shape[0])
    if features.shape[0] < 2:
        raise ValueError("feature_geometry needs at least two samples")
    x = features.double() - features.double().mean(dim=0)
    rank = effective_rank(x)
    unit = F.normalize(x, dim=1)
    cosine = unit @ unit.T
    same = groups[:, None] == groups[None, :]
    off_diagonal = ~torch.eye(len(groups), dtype=torch.bool, device=features.device)
    within, between = cosine[same & off_diagonal], cosine[~same]
    nan = float("nan")
    return {
        "effective_rank": rank,
        "within_level_cosine": float(within.mean()) if within.numel() else nan,
        "between_level_cosine": float(between.mean()) if between.numel() else nan,
    }
