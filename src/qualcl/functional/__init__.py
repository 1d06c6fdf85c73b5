"""Pure tensor maths: no state, no I/O. Every module in :mod:`qualcl.losses` wraps one of these."""

from qualcl.functional.circle import circle_loss, relevance_degrees
from qualcl.functional.focal import batch_entropy, focal_loss
from qualcl.functional.info_nce import info_nce, info_nce_from_logits, nt_xent, restrict_top_k
from qualcl.functional.multi_level import (
    MinerOutput,
    MultiLevelResult,
    NegativeMiner,
    PairLoss,
    multi_level_info_nce,
)
from qualcl.functional.reduction import weighted_reduce

__all__ = [
    "MinerOutput",
    "MultiLevelResult",
    "NegativeMiner",
    "PairLoss",
    "batch_entropy",
    "circle_loss",
    "focal_loss",
    "info_nce",
    "info_nce_from_logits",
    "multi_level_info_nce",
    "nt_xent",
    "relevance_degrees",
    "restrict_top_k",
    "weighted_reduce",
]
