"""Readers for the real datasets the recipes use; each fails with a message naming what is missing."""

from qualcl.data.readers.eyeq import EYEQ_QUALITY, FundusRecord, read_eyeq
from qualcl.data.readers.idrid import (
    IDRID_LESIONS,
    IDRiDGradingRecord,
    IDRiDSegmentationRecord,
    load_mask,
    mask_to_boxes,
    read_idrid_grading,
    read_idrid_segmentation,
)
from qualcl.data.readers.nih_cxr14 import NIH_FINDINGS, CXRRecord, findings_to_multi_hot, read_nih_cxr14

__all__ = [
    "EYEQ_QUALITY",
    "IDRID_LESIONS",
    "NIH_FINDINGS",
    "CXRRecord",
    "FundusRecord",
    "IDRiDGradingRecord",
    "IDRiDSegmentationRecord",
    "findings_to_multi_hot",
    "load_mask",
    "mask_to_boxes",
    "read_eyeq",
    "read_idrid_grading",
    "read_idrid_segmentation",
    "read_nih_cxr14",
]
