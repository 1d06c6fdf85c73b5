"""Data: the embedded synthetic fundus set and the quality degradations.

:mod:`qualcl.data.synthetic` generates SynthFundus and :mod:`qualcl.data.degrade` holds the Shen et al.
degradations. Readers of the real datasets live in :mod:`qualcl.data.readers`, the CoMCL level split in
:mod:`qualcl.data.levels`, and :class:`ImageTable` is the in-memory table every recipe trains on
(:func:`load_fundus_table` fills it from reader records). :class:`LocalDiscriminationViews` draws the
views of local discrimination.
"""

from qualcl.data.degrade import (
    FACTOR_CODES,
    FACTORS,
    QUALITY_NAMES,
    apply_degradation,
    degrade_blur,
    degrade_illumination,
    degrade_image,
    degrade_spots,
    degrade_tensor,
    factor_labels,
    fov_mask,
    gaussian_blur,
    quality_from_params,
    quality_index,
    sample_degradation,
    type_code,
)
from qualcl.data.loading import FUNDUS_QUALITY, load_fundus_table
from qualcl.data.synthetic import (
    FundusSample,
    SyntheticFundusDataset,
    generate_fundus,
    generate_patient,
    grade_from_lesions,
    load_fundus_dataset,
    save_preview_grid,
    write_fundus_dataset,
)
from qualcl.data.table import ImageTable
from qualcl.data.views import LocalBatch, LocalDiscriminationViews, LocalViews, realign_grid

__all__ = [
    "FACTORS",
    "FACTOR_CODES",
    "FUNDUS_QUALITY",
    "QUALITY_NAMES",
    "FundusSample",
    "ImageTable",
    "LocalBatch",
    "LocalDiscriminationViews",
    "LocalViews",
    "SyntheticFundusDataset",
    "apply_degradation",
    "degrade_blur",
    "degrade_illumination",
    "degrade_image",
    "degrade_spots",
    "degrade_tensor",
    "factor_labels",
    "fov_mask",
    "gaussian_blur",
    "generate_fundus",
    "generate_patient",
    "grade_from_lesions",
    "load_fundus_dataset",
    "load_fundus_table",
    "quality_from_params",
    "quality_index",
    "realign_grid",
    "sample_degradation",
    "save_preview_grid",
    "type_code",
    "write_fundus_dataset",
]
