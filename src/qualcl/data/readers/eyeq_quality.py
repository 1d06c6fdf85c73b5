"""EyeQ as canonical quality-labelled records (for MKCNet-style recipes), on top of :func:`read_eyeq`.

EyeQ's own quality codes are already best first (0 Good, 1 Usable, 2 Reject), so they are the
canonical index unchanged; MKCNet's split files write them reversed (2 = Good) — see
:func:`qualcl.data.readers.quality.mkcnet_quality`. The diagnosis is the EyePACS DR grade 0–4;
:func:`qualcl.data.readers.quality.mkcnet_diagnosis` gives MKCNet's 3 classes. MKCNet pools EyeQ's
train and test CSVs (28,792 images) and splits them randomly 60/10/30.

Reference:
    H. Fu et al., "Evaluation of Retinal Image Quality Assessment Networks in Different
    Color-spaces", MICCAI 2019.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qualcl.data.readers.eyeq import FundusRecord, read_eyeq
from qualcl.data.readers.quality import ExtraValue, QualityLabelledRecord

__all__ = ["eyeq_to_quality_records", "read_eyeq_quality"]


def eyeq_to_quality_records(records: Iterable[FundusRecord]) -> list[QualityLabelledRecord]:
    """Convert :class:`FundusRecord` objects from :func:`read_eyeq` to canonical records.

    Args:
        records: EyeQ records.

    Returns:
        Records with ``dataset="eyeq"``, ``source="eyeq"``, ``diagnosis`` the DR grade, ``quality``
        the EyeQ code and ``extra["eye"]`` when the file name says which eye.

    Examples:
        >>> from pathlib import Path
        >>> fundus = FundusRecord(Path("10_left.png"), dr_grade=3, quality=1, patient_id="10", eye="left")
        >>> record = eyeq_to_quality_records([fundus])[0]
        >>> record.quality_name, record.diagnosis, record.extra["eye"]
        ('Usable', 3, 'left')
    """
    out = []
    for record in records:
        extra: dict[str, ExtraValue] = {} if record.eye is None else {"eye": record.eye}
        out.append(
            QualityLabelledRecord(
                image=record.image,
                diagnosis=record.dr_grade,
                quality=record.quality,
                patient_id=record.patient_id,
                source="eyeq",
                dataset="eyeq",
                extra=extra,
            )
        )
    return out


def read_eyeq_quality(
    root: str | Path,
    split: str = "train",
    *,
    image_dir: str | Path | None = None,
    check_files: bool = True,
) -> list[QualityLabelledRecord]:
    """Read an EyeQ split (see :func:`read_eyeq`) as canonical quality-labelled records.

    Args:
        root: Dataset folder (``Label_EyeQ_{split}.csv`` in it or in ``data/``).
        split: ``"train"`` or ``"test"``.
        image_dir: Folder holding the images, if not one of :func:`read_eyeq`'s defaults.
        check_files: Fail if an image is missing.

    Returns:
        One record per CSV row, in file order.

    Raises:
        FileNotFoundError: The folder, the label file or an image is missing (named).
        ValueError: A column is missing or a value is out of range (file and line named).

    Examples:
        >>> records = read_eyeq_quality("EyeQ", "test")  # doctest: +SKIP
        >>> records[0].quality_name  # doctest: +SKIP
        'Good'

    Reference:
        Fu et al., MICCAI 2019.
    """
    return eyeq_to_quality_records(read_eyeq(root, split, image_dir=image_dir, check_files=check_files))
