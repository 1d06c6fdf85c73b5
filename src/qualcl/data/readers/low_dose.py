"""Simulated low-dose radiographs (bicubic down- then up-sampling), applied lazily to records.

MKCNet's CXR-IQAD says only that low dose is "simulated by bicubic down-sampling". qualcl's
reading (a decision): shrink the image by ``factor`` with bicubic interpolation, then enlarge it back
to its original size with bicubic interpolation, so the image keeps its size but loses the detail a
lower dose would blur away. No noise is added and nothing is random, so the result depends only on
the image and the factor.

Records carry the factor (:attr:`QualityLabelledRecord.low_dose_factor`) instead of a degraded copy:
:func:`load_quality_image` applies it when the image is opened, and :func:`write_low_dose_images`
writes degraded copies only when asked.

Note on the factor: a degradation made at the file's resolution survives a later resize to the
network input only if the shrunken image is smaller than that input (a 1024-px NIH image needs a
factor above 4 for MKCNet's 256×256 input, a 2,000-px Kermany image one above 8). To make the
degradation independent of the file's resolution, load with ``size`` (the network input): the
image is resized first and then degraded, so factor 4 at 256×256 always means a 64-px detail level.

Reference:
    H. Che, S. Chen, H. Chen, "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding",
    CVPR 2023 (CXR-IQAD construction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image

from qualcl.data.images import open_image
from qualcl.data.readers.quality import QualityLabelledRecord

__all__ = ["load_quality_image", "simulate_low_dose", "write_low_dose_images"]


def simulate_low_dose(image: Image.Image, factor: float) -> Image.Image:
    """Simulate a low-dose image by bicubic down-sampling by ``factor`` and bicubic up-sampling back.

    Palette and 1-bit images are converted to ``"RGB"`` / ``"L"`` first; every other mode keeps its
    mode. The output has the input's size. Deterministic.

    Args:
        image: PIL image.
        factor: Down-sampling ratio, finite and >= 1 (1 returns an unchanged copy). Each side is
            shrunk to ``max(1, round(side / factor))`` pixels.

    Returns:
        The degraded image, same size as ``image``.

    Raises:
        ValueError: ``factor`` is not finite or below 1.

    Examples:
        >>> from PIL import Image
        >>> image = Image.linear_gradient("L").resize((64, 64))
        >>> simulate_low_dose(image, 4.0).size
        (64, 64)

    Reference:
        Che et al., CVPR 2023 ("low-dose simulated by bicubic down-sampling").
    """
    if not (math.isfinite(factor) and factor >= 1):
        raise ValueError(f"factor must be a finite number >= 1, got {factor}")
    if image.mode == "P":
        image = image.convert("RGB")
    elif image.mode == "1":
        image = image.convert("L")
    if factor == 1:
        return image.copy()
    width, height = image.size
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    shrunk = image.resize(small, Image.Resampling.BICUBIC)
    return shrunk.resize((width, height), Image.Resampling.BICUBIC)


def load_quality_image(
    record: QualityLabelledRecord, mode: str | None = None, size: tuple[int, int] | None = None
) -> Image.Image:
    """Open a record's image, convert it to ``mode``, resize it and apply its simulated low dose, if any.

    Args:
        record: A canonical record.
        mode: PIL mode to convert to first (``"L"`` for CXR/CT/OCTA, ``"RGB"`` for fundus), or
            ``None`` to keep its mode after :func:`~qualcl.data.images.open_image` (8-bit samples; 16-bit
            greyscale is scaled by its bit depth).
        size: ``(width, height)`` to resize to (bicubic) *before* the low dose is simulated, so
            that the degradation does not depend on the file's resolution; ``None`` keeps the size.

    Returns:
        The loaded (and, when ``record.low_dose_factor`` is set, degraded) image.

    Raises:
        FileNotFoundError: The image file is missing (named).

    Examples:
        >>> image = load_quality_image(records[0], mode="L", size=(256, 256))  # doctest: +SKIP
    """
    image = open_image(record.image, mode)
    if size is not None:
        image = image.resize(size, Image.Resampling.BICUBIC)
    if record.low_dose_factor is not None:
        image = simulate_low_dose(image, record.low_dose_factor)
    return image


def write_low_dose_images(
    records: Sequence[QualityLabelledRecord],
    out_dir: str | Path,
    *,
    mode: str | None = None,
    size: tuple[int, int] | None = None,
) -> list[QualityLabelledRecord]:
    """Write the degraded copy of every record that has a low-dose factor, and point records at it.

    Records without ``low_dose_factor`` are returned unchanged. A degraded record's copy is written
    as ``out_dir/<source>/<stem>.png`` (lossless); the returned record points at the copy, has
    ``low_dose_factor=None`` and keeps the factor in ``extra["low_dose_factor"]``.

    Args:
        records: Records, for example from ``build_cxr_iqad``.
        out_dir: Folder to write into (created).
        mode: PIL mode to convert to before degrading, or ``None`` to keep the (8-bit) file mode.
        size: ``(width, height)`` to resize to before degrading (see :func:`load_quality_image`).

    Returns:
        The records, in the same order.

    Raises:
        FileNotFoundError: A source image is missing (named).
        ValueError: Two degraded records would be written to the same file.

    Examples:
        >>> records = write_low_dose_images(build_cxr_iqad("chest_xray", "NIH"), "cxr_iqad_lq")  # doctest: +SKIP
    """
    base = Path(out_dir)
    written: dict[Path, Path] = {}
    out = []
    for record in records:
        if record.low_dose_factor is None:
            out.append(record)
            continue
        target = base / record.source / (record.image.stem + ".png")
        if target in written:
            raise ValueError(f"{record.image} and {written[target]} would both be written to {target}")
        written[target] = record.image
        target.parent.mkdir(parents=True, exist_ok=True)
        load_quality_image(record, mode, size).save(target)
        extra = {**record.extra, "low_dose_factor": record.low_dose_factor}
        out.append(replace(record, image=target, low_dose_factor=None, extra=extra))
    return out
