"""Pure tensor maths: no state, no I/O. Every module in :mod:`qualcl.losses` wraps one of these."""

from qualcl.functional.circle import circle_loss, relevance_degrees
from qualcl.functional.dice import soft_dice_loss
from qualcl.functional.focal import batch_entropy, focal_loss
from qualcl.functional.info_nce import info_nce, info_nce_from_logits, nt_xent, restrict_top_k
from qualcl.functional.local import (
    assignment_entropy,
    grid_items,
    mixup_consistency,
    mixup_targets,
    patch_discrimination,
    patch_grid,
    region_discrimination,
    region_features,
)
from qualcl.functional.multi_level import (
    MinerOutput,
    MultiLevelResult,
    NegativeMiner,
    PairLoss,
    multi_level_info_nce,
)
from qualcl.functional.patches import (
    MaskingResult,
    kept_tokens,
    masked_reconstruction_loss,
    patchify,
    random_masking,
    sincos_2d_position_embedding,
    unpatchify,
)
from qualcl.functional.reduction import weighted_reduce
from qualcl.functional.tokens import MaskedTokens, caption_loss, mask_tokens

__all__ = [
    "MaskedTokens",
    "MaskingResult",
    "MinerOutput",
    "MultiLevelResult",
    "NegativeMiner",
    "PairLoss",
    "assignment_entropy",
    "batch_entropy",
    "caption_loss",
    "circle_loss",
    "focal_loss",
    "grid_items",
    "info_nce",
    "info_nce_from_logits",
    "kept_tokens",
    "mask_tokens",
    "masked_reconstruction_loss",
    "mixup_consistency",
    "mixup_targets",
    "multi_level_info_nce",
    "nt_xent",
    "patch_discrimination",
    "patch_grid",
    "patchify",
    "random_masking",
    "region_discrimination",
    "region_features",
    "relevance_degrees",
    "restrict_top_k",
    "sincos_2d_position_embedding",
    "soft_dice_loss",
    "unpatchify",
    "weighted_reduce",
]
