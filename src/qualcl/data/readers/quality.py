"""The canonical quality-labelled record of MKCNet-style data and the per-dataset quality schemes.

Every reader of a dataset with image-quality labels (EyeQ, DeepDRiD, DRAC 2022, CXR-IQAD, CT-IQAD)
returns :class:`QualityLabelledRecord` objects whose ``quality`` is an index into the dataset's
:class:`QualityScheme` **ordered best first**: ``0`` is always the highest quality and every other
level is low quality (:func:`is_low_quality`). How each dataset's raw codes map onto that order:

- ``eyeq``: ``quality`` 0 → 0 Good, 1 → 1 Usable, 2 → 2 Reject; MKCNet IQ codes 2, 1, 0 (reversed).
- ``deepdrid``: ``Overall quality`` 1 → 0 good, 0 → 1 not good; MKCNet IQ codes 1, 0.
- ``drac``: ``image quality level`` 2 → 0 excellent, 1 → 1 good, 0 → 2 poor; MKCNet IQ codes 1, 0, 0
  (binary, only "excellent" is HQ — inferred, see below).
- ``cxr_iqad`` (constructed): 0 HQ child, 1 LQ child (simulated low dose), 2 LQ adult; MKCNet IQ 0, 1, 2.
- ``ct_iqad`` (constructed): 0 HQ (SARS-CoV-2 CT-scan), 1 LQ (COVID-CT); MKCNet IQ codes 1, 0.

Diagnoses stay in the dataset's own coding (EyeQ/DeepDRiD: ICDR grade 0–4; DRAC: 0 normal, 1 NPDR,
2 PDR; CXR-IQAD: 0 Normal, 1 Pneumonia; CT-IQAD: 0 non-COVID, 1 COVID); :func:`mkcnet_labels` turns a
record into the ``(DR_label, IQ_label)`` pair of MKCNet's split files, applying MKCNet's 5 → 3
grade mapping (:func:`mkcnet_diagnosis`) to EyeQ and DeepDRiD.

Notes on the MKCNet encodings (checked against ``chehx/MKCNet/dataset_splits``):

- EyeQ: IQ reversed (2 = Good, 1 = Usable, 0 = Reject); DR 0–4 mapped in ``dataset.py`` to 3 classes.
- DeepDRiD: IQ = ``Overall quality`` (1 = good); DR = the per-eye level, mapped 5 → 3 as EyeQ.
- DRAC: IQ 1 = HQ, 0 = LQ. The challenge's quality labels have 3 levels; about 15.7 % of MKCNet's
  DRAC images are LQ, which fits "everything below excellent is LQ" better than "poor only" (poor,
  ungradable images are presumably rare in the DR-grading set). This binarisation is inferred.
- CXR-IQAD: IQ 0 = HQ child, 1 = LQ (low-dose) child, 2 = LQ adult (NIH); which of the two child
  codes is HQ is inferred (both are ~2,930 images).
- CT-IQAD: IQ 1 = HQ (SARS-CoV-2 CT-scan, file names ``Covid (n).png`` / ``Non-Covid (n).png``),
  0 = LQ (COVID-CT); **DR 1 = COVID, 0 = non-COVID** in the split files (``Covid (1109).png,1,1``,
  ``Non-Covid (529).png,0,1``) — the opposite of what the CT-IQAD description suggests.

Reference:
    H. Che, S. Chen, H. Chen, "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding",
    CVPR 2023 (code: github.com/chehx/MKCNet).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

__all__ = [
    "QUALITY_SCHEMES",
    "QualityLabelledRecord",
    "QualityScheme",
    "is_low_quality",
    "mkcnet_diagnosis",
    "mkcnet_labels",
    "mkcnet_quality",
    "quality_scheme",
]

#: Value types allowed in :attr:`QualityLabelledRecord.extra`.
ExtraValue: TypeAlias = int | float | str

_ICDR = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "PDR")
#: MKCNet's 5 → 3 DR mapping (``dataset.py::_modifyline_``): 0 → 0, 1/2/3 → 1, 4 → 2.
_MKCNET_DR = (0, 1, 1, 1, 2)


@dataclass(frozen=True)
class QualityScheme:
    """How one dataset names its quality levels (best first) and diagnoses, and MKCNet's codes.

    Attributes:
        name: Key in :data:`QUALITY_SCHEMES` (``"eyeq"``, ``"deepdrid"``, ``"drac"``,
            ``"cxr_iqad"``, ``"ct_iqad"``).
        quality_names: Quality level names, index 0 the best.
        diagnosis_names: Diagnosis names, indexed by the record's ``diagnosis``.
        mkcnet_quality: MKCNet split-file ``IQ_label`` for each canonical quality index.
        mkcnet_diagnosis: MKCNet ``DR_label`` for each diagnosis, or ``None`` for the identity.

    Examples:
        >>> scheme = quality_scheme("eyeq")
        >>> scheme.quality_names, scheme.mkcnet_quality, scheme.num_mkcnet_quality
        (('Good', 'Usable', 'Reject'), (2, 1, 0), 3)
    """

    name: str
    quality_names: tuple[str, ...]
    diagnosis_names: tuple[str, ...]
    mkcnet_quality: tuple[int, ...]
    mkcnet_diagnosis: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.mkcnet_quality) != len(self.quality_names):
            raise ValueError(
                f"{self.name}: mkcnet_quality needs one code per quality level "
                f"({len(self.quality_names)}), got {len(self.mkcnet_quality)}"
            )
        if self.mkcnet_diagnosis is not None and len(self.mkcnet_diagnosis) != len(self.diagnosis_names):
            raise ValueError(f"{self.name}: mkcnet_diagnosis needs one code per diagnosis")

    @property
    def num_mkcnet_quality(self) -> int:
        """Number of quality classes MKCNet trains on (``NUM_IQ``)."""
        return len(set(self.mkcnet_quality))

    @property
    def num_mkcnet_diagnosis(self) -> int:
        """Number of diagnosis classes MKCNet trains on (``NUM_T``)."""
        codes = self.mkcnet_diagnosis if self.mkcnet_diagnosis is not None else range(len(self.diagnosis_names))
        return len(set(codes))


#: The quality schemes of MKCNet's five datasets, keyed by :attr:`QualityScheme.name`.
QUALITY_SCHEMES: Mapping[str, QualityScheme] = {
    scheme.name: scheme
    for scheme in (
        QualityScheme("eyeq", ("Good", "Usable", "Reject"), _ICDR, (2, 1, 0), _MKCNET_DR),
        QualityScheme("deepdrid", ("good", "not good"), _ICDR, (1, 0), _MKCNET_DR),
        QualityScheme("drac", ("excellent", "good", "poor"), ("normal", "NPDR", "PDR"), (1, 0, 0)),
        QualityScheme("cxr_iqad", ("HQ child", "LQ child", "LQ adult"), ("Normal", "Pneumonia"), (0, 1, 2)),
        QualityScheme("ct_iqad", ("HQ", "LQ"), ("non-COVID", "COVID"), (1, 0)),
    )
}


def quality_scheme(dataset: str) -> QualityScheme:
    """Return the :class:`QualityScheme` of ``dataset``, naming the known ones when it is unknown.

    Args:
        dataset: One of ``"eyeq"``, ``"deepdrid"``, ``"drac"``, ``"cxr_iqad"``, ``"ct_iqad"``.

    Returns:
        The scheme.

    Raises:
        ValueError: ``dataset`` is not a known scheme.

    Examples:
        >>> quality_scheme("drac").quality_names
        ('excellent', 'good', 'poor')
    """
    try:
        return QUALITY_SCHEMES[dataset]
    except KeyError:
        raise ValueError(f"dataset must be one of {sorted(QUALITY_SCHEMES)}, got {dataset!r}") from None


@dataclass(frozen=True)
class QualityLabelledRecord:
    """One image with a diagnosis and an ordered (best-first) quality label.

    Attributes:
        image: Path of the image file (as read; a low-dose copy is simulated on loading).
        diagnosis: Diagnosis in the dataset's own coding (``scheme.diagnosis_names``).
        quality: Canonical quality index, 0 = best (``scheme.quality_names``).
        patient_id: Patient identifier, or ``None`` when the dataset does not give one.
        source: Where the image comes from (``"eyeq"``, ``"deepdrid"``, ``"drac2022"``,
            ``"kermany"``, ``"nih_cxr14"``, ``"sars_cov2_ct"``, ``"covid_ct"``).
        dataset: Key of the record's :class:`QualityScheme`.
        extra: Further per-image values (DeepDRiD's ``Clarity`` / ``Field definition`` /
            ``Artifact`` scores, the eye, the source split, …).
        low_dose_factor: If set, the image is to be degraded on loading by
            :func:`qualcl.data.readers.low_dose.simulate_low_dose` with this factor.

    Examples:
        >>> record = QualityLabelledRecord(Path("a.png"), 1, 2, "7", "drac2022", "drac")
        >>> record.quality_name, record.diagnosis_name, is_low_quality(record)
        ('poor', 'NPDR', True)
    """

    image: Path
    diagnosis: int
    quality: int
    patient_id: str | None
    source: str
    dataset: str
    extra: Mapping[str, ExtraValue] = field(default_factory=dict, hash=False)
    low_dose_factor: float | None = None

    def __post_init__(self) -> None:
        scheme = quality_scheme(self.dataset)
        if not 0 <= self.quality < len(scheme.quality_names):
            raise ValueError(
                f"quality must lie in 0..{len(scheme.quality_names) - 1} for {self.dataset} "
                f"{scheme.quality_names}, got {self.quality}"
            )
        if not 0 <= self.diagnosis < len(scheme.diagnosis_names):
            raise ValueError(
                f"diagnosis must lie in 0..{len(scheme.diagnosis_names) - 1} for {self.dataset} "
                f"{scheme.diagnosis_names}, got {self.diagnosis}"
            )
        if self.low_dose_factor is not None and not self.low_dose_factor >= 1:
            raise ValueError(f"low_dose_factor must be None or >= 1, got {self.low_dose_factor}")

    @property
    def scheme(self) -> QualityScheme:
        """The record's :class:`QualityScheme`."""
        return QUALITY_SCHEMES[self.dataset]

    @property
    def quality_name(self) -> str:
        """Name of the quality level (for example ``"Usable"``)."""
        return self.scheme.quality_names[self.quality]

    @property
    def diagnosis_name(self) -> str:
        """Name of the diagnosis (for example ``"PDR"``)."""
        return self.scheme.diagnosis_names[self.diagnosis]


def is_low_quality(quality: int | QualityLabelledRecord) -> bool:
    """Whether a canonical quality index (or a record) is low quality: every level but the best.

    Args:
        quality: Canonical best-first quality index, or a record.

    Returns:
        ``True`` for every index above 0.

    Raises:
        ValueError: ``quality`` is negative.

    Examples:
        >>> is_low_quality(0), is_low_quality(1)
        (False, True)
    """
    value = quality.quality if isinstance(quality, QualityLabelledRecord) else quality
    if value < 0:
        raise ValueError(f"quality must be >= 0 (0 = best), got {value}")
    return value > 0


def mkcnet_diagnosis(grade: int) -> int:
    """MKCNet's 5 → 3 diabetic-retinopathy mapping, used for EyeQ and DeepDRiD.

    ``0 → 0`` (no DR), ``1, 2, 3 → 1`` (NPDR), ``4 → 2`` (PDR), as in MKCNet's
    ``dataset.py::_modifyline_``.

    Args:
        grade: ICDR grade 0–4.

    Returns:
        The 3-class label.

    Raises:
        ValueError: ``grade`` is outside 0..4.

    Examples:
        >>> [mkcnet_diagnosis(g) for g in range(5)]
        [0, 1, 1, 1, 2]
    """
    if not 0 <= grade <= 4:
        raise ValueError(f"grade must lie in 0..4, got {grade}")
    return _MKCNET_DR[grade]


def mkcnet_quality(quality: int, dataset: str) -> int:
    """MKCNet's split-file ``IQ_label`` for a canonical (best-first) quality index.

    EyeQ ``(0, 1, 2) → (2, 1, 0)``; DeepDRiD ``(0, 1) → (1, 0)``; DRAC ``(0, 1, 2) → (1, 0, 0)``;
    CXR-IQAD identity; CT-IQAD ``(0, 1) → (1, 0)``. See the module docstring for the evidence.

    Args:
        quality: Canonical quality index.
        dataset: Scheme key (see :data:`QUALITY_SCHEMES`).

    Returns:
        The MKCNet code.

    Raises:
        ValueError: Unknown dataset or quality out of range.

    Examples:
        >>> mkcnet_quality(0, "eyeq"), mkcnet_quality(1, "drac")
        (2, 0)
    """
    codes = quality_scheme(dataset).mkcnet_quality
    if not 0 <= quality < len(codes):
        raise ValueError(f"quality must lie in 0..{len(codes) - 1} for {dataset}, got {quality}")
    return codes[quality]


def mkcnet_labels(record: QualityLabelledRecord) -> tuple[int, int]:
    """The ``(DR_label, IQ_label)`` pair MKCNet trains on for ``record``.

    The diagnosis goes through :func:`mkcnet_diagnosis` for EyeQ and DeepDRiD (identity elsewhere)
    and the quality through :func:`mkcnet_quality`; MKCNet's joint label is then
    ``IQ_label * num_mkcnet_diagnosis + DR_label``.

    Args:
        record: A canonical record.

    Returns:
        ``(diagnosis, quality)`` in MKCNet's encoding.

    Examples:
        >>> record = QualityLabelledRecord(Path("1_l1.jpg"), 4, 0, "1", "deepdrid", "deepdrid")
        >>> mkcnet_labels(record)
        (2, 1)
    """
    scheme = record.scheme
    diagnosis = record.diagnosis if scheme.mkcnet_diagnosis is None else scheme.mkcnet_diagnosis[record.diagnosis]
    return diagnosis, scheme.mkcnet_quality[record.quality]
