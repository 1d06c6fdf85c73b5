"""Losses: ``nn.Module`` classes on one protocol (:class:`Loss`: families, reduction, weights, exact DDP).

See ``docs/losses.md`` for the conventions and a snippet per calling family.
"""

from qualcl.losses.base import FAMILIES, Loss
from qualcl.losses.caption import CaptionLoss
from qualcl.losses.circle import CircleLoss, FineTripletLoss
from qualcl.losses.clip import ClipLoss
from qualcl.losses.focal import FocalLoss
from qualcl.losses.info_nce import InfoNCE
from qualcl.losses.local import MixupConsistencyLoss, PatchDiscriminationLoss, RegionDiscriminationLoss
from qualcl.losses.multi_level import MultiLevelInfoNCE
from qualcl.losses.nt_xent import NTXentLoss
from qualcl.losses.reconstruction import MaskedReconstructionLoss
from qualcl.losses.siglip import SigLipLoss

__all__ = [
    "FAMILIES",
    "CaptionLoss",
    "CircleLoss",
    "ClipLoss",
    "FineTripletLoss",
    "FocalLoss",
    "InfoNCE",
    "Loss",
    "MaskedReconstructionLoss",
    "MixupConsistencyLoss",
    "MultiLevelInfoNCE",
    "NTXentLoss",
    "PatchDiscriminationLoss",
    "RegionDiscriminationLoss",
    "SigLipLoss",
]
