"""Readers for the real datasets the recipes use; each fails with a message naming what is missing."""

from qualcl.data.readers.aptos import APTOS_GRADES, AptosRecord, read_aptos
from qualcl.data.readers.deepdrid import DEEPDRID_SCORES, read_deepdrid
from qualcl.data.readers.drac import read_drac
from qualcl.data.readers.eyepacs import EyePACSRecord, fundusdr_split, read_eyepacs, shuffle_split
from qualcl.data.readers.eyeq import EYEQ_QUALITY, FundusRecord, read_eyeq
from qualcl.data.readers.eyeq_quality import eyeq_to_quality_records, read_eyeq_quality
from qualcl.data.readers.fives import FIVES_CATEGORIES, FIVES_FACTORS, FIVESRecord, read_fives
from qualcl.data.readers.idrid import (
    IDRID_LESIONS,
    IDRiDGradingRecord,
    IDRiDSegmentationRecord,
    load_mask,
    mask_to_boxes,
    read_idrid_grading,
    read_idrid_segmentation,
)
from qualcl.data.readers.iqad import CT_IQAD_HQ_CLASSES, CT_IQAD_LQ_CLASSES, build_ct_iqad, build_cxr_iqad
from qualcl.data.readers.kermany import KERMANY_CLASSES, KERMANY_SPLITS, KermanyRecord, read_kermany_pneumonia
from qualcl.data.readers.low_dose import load_quality_image, simulate_low_dose, write_low_dose_images
from qualcl.data.readers.nih_cxr14 import (
    CHESTXRAY8_FINDINGS,
    NIH_FINDINGS,
    CXRRecord,
    findings_to_multi_hot,
    read_nih_boxes,
    read_nih_cxr14,
)
from qualcl.data.readers.odir import ODIR_CATEGORIES, ODIR_QUALITY, ODIRRecord, odir_keyword_labels, read_odir
from qualcl.data.readers.quality import (
    QUALITY_SCHEMES,
    QualityLabelledRecord,
    QualityScheme,
    is_low_quality,
    mkcnet_diagnosis,
    mkcnet_labels,
    mkcnet_quality,
    quality_scheme,
)
from qualcl.data.readers.segmentation import (
    SEGMENTATION_DATASETS,
    SegmentationRecord,
    SegmentationSample,
    fundus_roi,
    load_segmentation_sample,
    read_chase_db1,
    read_drishti_gs,
    read_drive,
    read_hrf,
    read_segmentation,
    read_stare,
)

__all__ = [
    "APTOS_GRADES",
    "CHESTXRAY8_FINDINGS",
    "CT_IQAD_HQ_CLASSES",
    "CT_IQAD_LQ_CLASSES",
    "DEEPDRID_SCORES",
    "EYEQ_QUALITY",
    "FIVES_CATEGORIES",
    "FIVES_FACTORS",
    "IDRID_LESIONS",
    "KERMANY_CLASSES",
    "KERMANY_SPLITS",
    "NIH_FINDINGS",
    "ODIR_CATEGORIES",
    "ODIR_QUALITY",
    "QUALITY_SCHEMES",
    "SEGMENTATION_DATASETS",
    "AptosRecord",
    "CXRRecord",
    "EyePACSRecord",
    "FIVESRecord",
    "FundusRecord",
    "IDRiDGradingRecord",
    "IDRiDSegmentationRecord",
    "KermanyRecord",
    "ODIRRecord",
    "QualityLabelledRecord",
    "QualityScheme",
    "SegmentationRecord",
    "SegmentationSample",
    "build_ct_iqad",
    "build_cxr_iqad",
    "eyeq_to_quality_records",
    "findings_to_multi_hot",
    "fundus_roi",
    "fundusdr_split",
    "is_low_quality",
    "load_mask",
    "load_quality_image",
    "load_segmentation_sample",
    "mask_to_boxes",
    "mkcnet_diagnosis",
    "mkcnet_labels",
    "mkcnet_quality",
    "odir_keyword_labels",
    "quality_scheme",
    "read_aptos",
    "read_chase_db1",
    "read_deepdrid",
    "read_drac",
    "read_drishti_gs",
    "read_drive",
    "read_eyepacs",
    "read_eyeq",
    "read_eyeq_quality",
    "read_fives",
    "read_hrf",
    "read_idrid_grading",
    "read_idrid_segmentation",
    "read_kermany_pneumonia",
    "read_nih_boxes",
    "read_nih_cxr14",
    "read_odir",
    "read_segmentation",
    "read_stare",
    "shuffle_split",
    "simulate_low_dose",
    "write_low_dose_images",
]
