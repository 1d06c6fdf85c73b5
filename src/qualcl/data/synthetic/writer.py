"""Write a SynthFundus dataset to disk in EyeQ's format, and a preview grid of it.

Layout of ``out_dir``::

    images/{pid}_{left|right}.png                      RGB fundus photographs
    masks/{pid}_{eye}_{MA,HE,EX,NV,OD,vessels}.png     binary masks (0 / 255), one per type, always written
    Label_EyeQ_train.csv, Label_EyeQ_test.csv          ",image,quality,DR_grade" (EyeQ), split by patient
    ground_truth.json                                  {"metadata": {...}, "images": [per-image records]}

The same arguments give byte-identical files. ``ground_truth.json`` is written last, so its presence
means the folder is complete.

Reference:
    ``docs/data.md`` (outputs in the real datasets' formats, EyeQ's CSVs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from qualcl import __version__
from qualcl._cache import CACHE_ENV, cache_dir
from qualcl._locks import file_lock
from qualcl.data.degrade import QUALITY_NAMES
from qualcl.data.synthetic import grading
from qualcl.data.synthetic.anatomy import FOV_RADIUS
from qualcl.data.synthetic.fundus import (
    EYES,
    GENERATOR_VERSION,
    MASK_NAMES,
    FundusSample,
    check_lq_ratio,
    check_seed,
    check_size,
    generate_patient,
)
from qualcl.data.synthetic.grading import LESION_TYPES, QUADRANTS

__all__ = [
    "CACHE_ENV",
    "CSV_HEADER",
    "FundusDatasetSummary",
    "cache_dir",
    "cached_fundus_dataset",
    "ensure_fundus_dataset",
    "save_preview_grid",
    "split_patients",
    "to_uint8",
    "write_fundus_dataset",
]

#: Header of EyeQ's label files (the first column is an unnamed index).
CSV_HEADER = ",image,quality,DR_grade"

_SPLIT_STREAM = 2
_JSON_DIGITS = 4


@dataclass(frozen=True)
class FundusDatasetSummary:
    """What :func:`write_fundus_dataset` wrote.

    Attributes:
        root: The dataset folder.
        num_images: Images written.
        num_patients: Patients (two eyes each; the last may have one).
        num_train: Images in ``Label_EyeQ_train.csv``.
        num_test: Images in ``Label_EyeQ_test.csv``.
        grade_counts: Images per DR grade 0–4.
        quality_counts: Images per quality code (Good, Usable, Reject).

    Examples:
        >>> from pathlib import Path
        >>> print(FundusDatasetSummary(Path("d"), 2, 1, 2, 0, (1, 1, 0, 0, 0), (2, 0, 0)))
        2 images of 1 patients in d (train 2, test 0); grades 0-4: [1, 1, 0, 0, 0]; good/usable/reject: [2, 0, 0]
    """

    root: Path
    num_images: int
    num_patients: int
    num_train: int
    num_test: int
    grade_counts: tuple[int, ...]
    quality_counts: tuple[int, ...]

    def __str__(self) -> str:
        return (
            f"{self.num_images} images of {self.num_patients} patients in {self.root} "
            f"(train {self.num_train}, test {self.num_test}); grades 0-4: {list(self.grade_counts)}; "
            f"good/usable/reject: {list(self.quality_counts)}"
        )


def to_uint8(image: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Round a ``[0, 1]`` float image to ``uint8``.

    Examples:
        >>> import numpy as np
        >>> to_uint8(np.array([0.0, 0.5, 1.0], np.float32)).tolist()
        [0, 128, 255]
    """
    return np.asarray(np.round(np.clip(image, 0.0, 1.0) * 255.0), dtype=np.uint8)


def split_patients(num_patients: int, test_fraction: float, seed: int) -> frozenset[int]:
    """Patients of the test split: ``round(test_fraction · P)`` of them, chosen by a seeded permutation.

    At least one patient stays in each split when ``0 < test_fraction`` and there are two or more.

    Examples:
        >>> sorted(split_patients(10, 0.2, seed=0)) == sorted(split_patients(10, 0.2, seed=0))
        True
        >>> len(split_patients(10, 0.2, seed=0))
        2
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")
    seed = check_seed(seed)
    count = round(test_fraction * num_patients)
    if test_fraction > 0 and num_patients >= 2:
        count = min(max(count, 1), num_patients - 1)
    elif num_patients < 2:
        count = 0
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_STREAM,)))
    return frozenset(int(p) for p in rng.permutation(num_patients)[:count])


def _round(value: Any) -> Any:
    """Round floats (recursively) so that the JSON is compact and stable."""
    if isinstance(value, (float, np.floating)):
        return round(float(value), _JSON_DIGITS)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, dict):
        return {str(k): _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value


def _save_png(array: NDArray[Any], path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=6)


def _write_sample(sample: FundusSample, root: Path) -> None:
    _save_png(to_uint8(sample.image), root / "images" / f"{sample.stem}.png")
    for name in MASK_NAMES:
        mask = np.asarray(sample.masks[name], dtype=np.uint8) * np.uint8(255)
        _save_png(mask, root / "masks" / f"{sample.stem}_{name}.png")


def _write_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    lines = [CSV_HEADER] + [f"{i},{r['image']},{r['quality']},{r['dr_grade']}" for i, r in enumerate(records)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def _check_num_images(num_images: int) -> int:
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
    return int(num_images)


def write_fundus_dataset(
    out_dir: str | Path,
    num_images: int,
    size: int = 128,
    seed: int = 0,
    lq_ratio: float = 0.34,
    test_fraction: float = 0.2,
    progress: bool = True,
    *,
    grade_prior: str | Sequence[float] = "balanced",
    extra_test: int = 0,
) -> FundusDatasetSummary:
    """Generate ``num_images`` SynthFundus images and write them in EyeQ's format.

    Args:
        out_dir: Output folder (created; existing files of the same names are overwritten).
        num_images: Number of images (patient ``i // 2``, left eye for even ``i``).
        size: Image side in pixels (≥ 48).
        seed: Master seed; the same arguments give byte-identical files.
        lq_ratio: Probability of a low-quality image (Usable or Reject, half each); EyeQ train has 0.34.
        test_fraction: Fraction of *patients* in ``Label_EyeQ_test.csv``, in ``[0, 1)``.
        progress: Show a tqdm progress bar.
        grade_prior: ``"balanced"`` (default), ``"eyepacs"`` (≈ 73 % grade 0) or five weights.
        extra_test: Images of further patients (after the ``num_images``), all in the test split: a larger
            test set with the same training images (evaluation noise shrinks; training is unchanged).

    Returns:
        A :class:`FundusDatasetSummary` (``num_images`` counts the extra test images too).

    Raises:
        ValueError: An argument is out of range (the message names it).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     summary = write_fundus_dataset(tmp, 4, size=64, progress=False)
        ...     (summary.num_images, summary.num_patients, summary.num_train + summary.num_test)
        (4, 2, 4)

    Reference:
        ``docs/data.md`` (EyeQ: ``,image,quality,DR_grade``, 0 Good/1 Usable/2 Reject).
    """
    num_images = _check_num_images(num_images)
    seed = check_seed(seed)
    size = check_size(size)
    lq_ratio = check_lq_ratio(lq_ratio)
    prior = grading.grade_prior(grade_prior)
    if isinstance(extra_test, bool) or not isinstance(extra_test, (int, np.integer)) or extra_test < 0:
        raise ValueError(f"extra_test must be an integer >= 0, got {extra_test!r}")
    patients = math.ceil(num_images / 2)
    test_patients = split_patients(patients, test_fraction, seed) | frozenset(range(patients, patients + extra_test))
    eye_counts = [2] * (num_images // 2) + [1] * (num_images % 2) + [2] * (extra_test // 2) + [1] * (extra_test % 2)
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)

    records: list[dict[str, Any]] = []
    with tqdm(total=num_images + extra_test, desc="SynthFundus", unit="img", disable=not progress) as bar:
        for patient, count in enumerate(eye_counts):
            for sample in generate_patient(
                patient, size=size, seed=seed, grade_prior=prior.tolist(), lq_ratio=lq_ratio, eyes=EYES[:count]
            ):
                _write_sample(sample, root)
                record = sample.to_record()
                record["split"] = "test" if patient in test_patients else "train"
                record["image_path"] = f"images/{sample.stem}.png"
                record["masks"] = {name: f"masks/{sample.stem}_{name}.png" for name in MASK_NAMES}
                records.append(_round(record))
                bar.update(1)

    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    _write_csv(root / "Label_EyeQ_train.csv", train)
    _write_csv(root / "Label_EyeQ_test.csv", test)
    metadata = {
        "name": "SynthFundus",
        "generator": "qualcl.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "qualcl_version": __version__,
        "seed": seed,
        "size": size,
        "num_images": num_images,
        "num_patients": len(eye_counts),
        "lq_ratio": lq_ratio,
        "test_fraction": test_fraction,
        **({"extra_test": int(extra_test)} if extra_test else {}),  # absent when 0: older sets stay valid
        "grade_prior": [round(float(p), 6) for p in prior],
        "fov_radius": FOV_RADIUS,
        "lesion_types": list(LESION_TYPES),
        "quadrants": list(QUADRANTS),
        "mask_names": list(MASK_NAMES),
        "quality_names": list(QUALITY_NAMES),
        "grade_names": list(grading.GRADE_NAMES),
        "box_format": "x1, y1, x2, y2, type: inclusive-exclusive pixel coordinates",
        "degradation": "Shen et al., TMI 2021; type codes '001' illumination, '010' spot, '100' blur",
    }
    text = json.dumps({"metadata": _round(metadata), "images": records}, indent=1, ensure_ascii=False)
    partial = root / "ground_truth.json.tmp"  # written whole, then renamed: its presence means complete
    partial.write_text(text + "\n", encoding="utf-8", newline="\n")
    partial.replace(root / "ground_truth.json")
    grades = np.bincount([r["dr_grade"] for r in records], minlength=5)
    qualities = np.bincount([r["quality"] for r in records], minlength=3)
    return FundusDatasetSummary(
        root=root,
        num_images=len(records),
        num_patients=len(eye_counts),
        num_train=len(train),
        num_test=len(test),
        grade_counts=tuple(int(v) for v in grades),
        quality_counts=tuple(int(v) for v in qualities),
    )


def _examples_from_folder(root: Path) -> dict[tuple[int, int], NDArray[np.uint8]]:
    truth = root / "ground_truth.json"
    if not truth.is_file():
        raise FileNotFoundError(f"save_preview_grid: {truth} does not exist (write the dataset first)")
    records = json.loads(truth.read_text(encoding="utf-8")).get("images")
    if not isinstance(records, list):
        raise ValueError(f"{truth} has no 'images' list")
    found: dict[tuple[int, int], NDArray[np.uint8]] = {}
    for record in records:
        key = (int(record["dr_grade"]), int(record["quality"]))
        if key in found:
            continue
        path = root / record.get("image_path", f"images/{record['image']}")
        if not path.is_file():
            raise FileNotFoundError(f"save_preview_grid: image {path} listed in {truth} does not exist")
        with Image.open(path) as image:
            found[key] = np.asarray(image.convert("RGB"))
    return found


def save_preview_grid(
    source: str | Path | Sequence[FundusSample], out_path: str | Path, *, tile: int = 160, labels: bool = True
) -> Path:
    """Save a preview PNG: rows DR grade 0–4, columns quality Good / Usable / Reject.

    Each cell shows the first image with that grade and quality; a cell without one is dark grey.

    Args:
        source: A folder written by :func:`write_fundus_dataset`, or generated samples.
        out_path: Where to write the PNG.
        tile: Side of each cell in pixels.
        labels: Write row and column titles.

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Examples:
        >>> import tempfile, pathlib
        >>> from qualcl.data.synthetic.fundus import generate_fundus
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     samples = [generate_fundus(i, size=64, grade=i % 5, quality=i % 3) for i in range(15)]
        ...     path = save_preview_grid(samples, pathlib.Path(tmp) / "preview.png", tile=64)
        ...     Image.open(path).size
        (264, 364)

    Reference:
        the layout of ``docs/data.md``'s preview (rows grade, columns quality).
    """
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 16:
        raise ValueError(f"tile must be an integer >= 16, got {tile!r}")
    if isinstance(source, (str, Path)):
        examples = _examples_from_folder(Path(source))
    else:
        examples = {}
        for sample in source:
            examples.setdefault((sample.dr_grade, sample.quality), to_uint8(sample.image))
    left, top, gap = (56, 20, 4) if labels else (0, 0, 4)
    width = left + 3 * tile + 4 * gap
    height = top + 5 * tile + 6 * gap
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for grade in range(5):
        y = top + gap + grade * (tile + gap)
        if labels:
            draw.text((4, y + tile // 2 - 6), f"grade {grade}", fill=(220, 220, 220))
        for quality in range(3):
            x = left + gap + quality * (tile + gap)
            if grade == 0 and labels:
                draw.text((x + 4, 4), QUALITY_NAMES[quality].capitalize(), fill=(220, 220, 220))
            array = examples.get((grade, quality))
            if array is None:
                draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=(40, 40, 40))
                continue
            cell = Image.fromarray(array).resize((tile, tile), Image.Resampling.BILINEAR)
            canvas.paste(cell, (x, y))
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


def ensure_fundus_dataset(
    out_dir: str | Path,
    num_images: int,
    size: int = 128,
    seed: int = 0,
    lq_ratio: float = 0.34,
    progress: bool = True,
    extra_test: int = 0,
) -> Path:
    """Return ``out_dir`` holding this SynthFundus set, generating it only if it is not there yet.

    A complete folder (``ground_truth.json`` present) is reused when it was written with the same
    ``num_images``, ``size``, ``seed``, ``lq_ratio`` and ``extra_test``; one written with other arguments
    raises instead of being silently reused or overwritten.

    Args:
        out_dir: Dataset folder.
        num_images: Number of images.
        size: Image side in pixels.
        seed: Master seed.
        lq_ratio: Low-quality probability.
        progress: Show a progress bar while generating.
        extra_test: Test-only images of further patients (:func:`write_fundus_dataset`).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: The folder holds a SynthFundus set generated with other arguments.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     first = ensure_fundus_dataset(tmp, 4, size=64, progress=False)
        ...     again = ensure_fundus_dataset(tmp, 4, size=64, progress=False)  # reused, not rewritten
        ...     first == again
        True
    """
    root = Path(out_dir)
    truth = root / "ground_truth.json"
    wanted = {"num_images": num_images, "size": size, "seed": seed, "lq_ratio": round(float(lq_ratio), _JSON_DIGITS)}
    wanted["extra_test"] = extra_test
    if truth.is_file():
        metadata = {"extra_test": 0, **json.loads(truth.read_text(encoding="utf-8")).get("metadata", {})}
        found = {key: metadata.get(key) for key in wanted}
        if found != wanted:
            raise ValueError(
                f"{root} holds a synthetic set generated with {found}, not {wanted}: "
                "choose another folder or delete this one"
            )
        return root
    write_fundus_dataset(root, num_images, size, seed, lq_ratio, progress=progress, extra_test=extra_test)
    return root


def cached_fundus_dataset(
    num_images: int,
    size: int = 128,
    seed: int = 0,
    lq_ratio: float = 0.34,
    *,
    progress: bool = True,
    cache: str | Path | None = None,
    extra_test: int = 0,
) -> Path:
    """The SynthFundus set with these arguments, generated once into the cache and reused by every run.

    The folder is ``<cache>/synthetic/synthfundus-v<generator>-n<images>-s<size>-seed<seed>-lq<ratio>``
    (and ``-xt<extra_test>`` when there are extra test images),
    so runs, ablations and tests with the same data share one copy and run folders hold results
    only. Processes that ask for the same set at once (the ranks of a DDP run, parallel runs) wait
    on a lock file while the first one generates it; a set interrupted half-way is completed by the
    next call (its ``ground_truth.json`` is written last).

    Args:
        num_images: Number of images.
        size: Image side in pixels.
        seed: Master seed.
        lq_ratio: Low-quality probability.
        progress: Show a progress bar while generating.
        cache: The cache folder (default :func:`cache_dir`).
        extra_test: Test-only images of further patients (:func:`write_fundus_dataset`).

    Returns:
        The dataset's folder.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     first = cached_fundus_dataset(4, size=64, progress=False, cache=tmp)
        ...     first.name, first == cached_fundus_dataset(4, size=64, progress=False, cache=tmp)
        ('synthfundus-v1.0.0-n4-s64-seed0-lq0.34', True)
    """
    root = (Path(cache) if cache is not None else cache_dir()) / "synthetic"
    key = f"synthfundus-v{GENERATOR_VERSION}-n{num_images}-s{size}-seed{seed}-lq{round(float(lq_ratio), _JSON_DIGITS)}"
    key += f"-xt{extra_test}" if extra_test else ""
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f"{key}.lock"):
        return ensure_fundus_dataset(root / key, num_images, size, seed, lq_ratio, progress, extra_test)
