"""Losses: thin stateful ``nn.Module`` wrappers over :mod:`qualcl.functional`."""

from qualcl.losses.caption import CaptionLoss
from qualcl.losses.circle import CircleLoss, FineTripletLoss
from qualcl.losses.clip import ClipLoss
from qualcl.losses.focal import FocalLoss
from qualcl.losses.info_nce import InfoNCE
from qualcl.losses.local import MixupConsistencyLoss, PatchDiscriminationLoss, RegionDiscriminationLoss
from qualcl.losses.multi_level import MultiLevelInfoNCE
from qualcl.losses.nt_xent import NTXentLoss
from qualcl.losses.reconstruction import MaskedReconstructionLoss

__all__ = [
    "CaptionLoss",
    "CircleLoss",
    "ClipLoss",
    "FineTripletLoss",
    "FocalLoss",
    "InfoNCE",
    "MaskedReconstructionLoss",
    "MixupConsistencyLoss",
    "MultiLevelInfoNCE",
    "NTXentLoss",
    "PatchDiscriminationLoss",
    "RegionDiscriminationLoss",
]
