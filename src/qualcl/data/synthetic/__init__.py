"""SynthFundus: seeded procedural fundus photographs with DR grades, lesions, masks, captions and quality.

Anatomy (background, choroidal texture, macula, vessel arcades, optic disc) is shared by a patient's
two eyes; each eye gets its own grade (fixed rule :func:`grade_from_lesions`), lesions and quality
degradation (:mod:`qualcl.data.degrade`). :func:`write_fundus_dataset` writes it in EyeQ's format.

Reference:
    ``docs/data.md`` ("SynthFundus" and the EyeQ reader).
"""

from qualcl.data.synthetic.anatomy import FOV_RADIUS
from qualcl.data.synthetic.captions import make_caption
from qualcl.data.synthetic.fundus import (
    EYES,
    GENERATOR_VERSION,
    MASK_NAMES,
    MIN_SIZE,
    FundusSample,
    draw_labels,
    generate_fundus,
    generate_patient,
    image_seed,
    patient_id,
    patient_seed,
)
from qualcl.data.synthetic.grading import (
    GRADE_NAMES,
    GRADE_PRIORS,
    LESION_TYPES,
    QUADRANTS,
    grade_from_lesions,
    grade_prior,
)
from qualcl.data.synthetic.lesions import Lesion
from qualcl.data.synthetic.reader import FundusFolder, SyntheticFundusDataset, load_fundus_dataset
from qualcl.data.synthetic.writer import (
    CACHE_ENV,
    CSV_HEADER,
    FundusDatasetSummary,
    cache_dir,
    cached_fundus_dataset,
    ensure_fundus_dataset,
    save_preview_grid,
    split_patients,
    write_fundus_dataset,
)

__all__ = [
    "CACHE_ENV",
    "CSV_HEADER",
    "EYES",
    "FOV_RADIUS",
    "GENERATOR_VERSION",
    "GRADE_NAMES",
    "GRADE_PRIORS",
    "LESION_TYPES",
    "MASK_NAMES",
    "MIN_SIZE",
    "QUADRANTS",
    "FundusDatasetSummary",
    "FundusFolder",
    "FundusSample",
    "Lesion",
    "SyntheticFundusDataset",
    "cache_dir",
    "cached_fundus_dataset",
    "draw_labels",
    "ensure_fundus_dataset",
    "generate_fundus",
    "generate_patient",
    "grade_from_lesions",
    "grade_prior",
    "image_seed",
    "load_fundus_dataset",
    "make_caption",
    "patient_id",
    "patient_seed",
    "save_preview_grid",
    "split_patients",
    "write_fundus_dataset",
]
