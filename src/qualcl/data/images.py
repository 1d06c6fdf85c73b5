"""Reading image files: every loader in qualcl opens images here, so they all agree on bit depth and errors.

PIL converts a 16-bit greyscale image (``I;16`` PNG, TIFF) to 8 bits by *clipping* at 255, which
turns almost every pixel of a 16-bit X-ray white. :func:`open_image` scales by the bit depth
instead (65535 → 255), and turns a truncated or unreadable file into an error that names it.
:func:`read_image` keeps the file's depth, and :func:`unit_array` gives its samples as fractions of
that depth (what a threshold such as "0.3 of the maximum" needs).
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

__all__ = ["open_image", "read_image", "to_8bit", "unit_array"]

#: PIL modes of more than 8 bits per sample, with the largest value their samples can hold.
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit samples: 16-bit greyscale is scaled by its bit depth, other modes pass through.

    ``"I"`` (32-bit integer) and ``"F"`` (float) images are scaled by their own maximum when it
    exceeds 255 (their bit depth is not recorded in the file); values within ``[0, 255]`` are kept.

    Args:
        image: A PIL image of any mode.

    Returns:
        An ``"L"`` image for 16/32-bit and float greyscale, else ``image`` itself.

    Examples:
        >>> import numpy as np
        >>> from PIL import Image
        >>> wide = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
        >>> np.asarray(to_8bit(wide)).tolist()
        [[0, 128, 255]]
    """
    if image.mode in _WIDE_MODES:
        array = np.asarray(image, dtype=np.float64) * (255.0 / _WIDE_MODES[image.mode])
    elif image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"image {getattr(image, 'filename', '')!s} holds non-finite values")
        array = np.clip(array, 0.0, None)
        peak = float(array.max()) if array.size else 0.0
        if peak > 255.0:
            array = array * (255.0 / (65535.0 if peak <= 65535.0 else peak))
    else:
        return image
    return Image.fromarray(np.rint(array).astype(np.uint8), mode="L")


def _peak(array: NDArray[np.float64], image: Image.Image) -> float:
    """The value that stands for "full" in an ``"I"`` / ``"F"`` image (their depth is not in the file)."""
    if not np.isfinite(array).all():
        raise ValueError(f"image {getattr(image, 'filename', '')!s} holds non-finite values")
    peak = float(array.max()) if array.size else 0.0
    return 255.0 if peak <= 255.0 else (65535.0 if peak <= 65535.0 else peak)


def unit_array(image: Image.Image) -> NDArray[np.float64]:
    """The samples of ``image`` as fractions of its bit depth: ``(H, W)`` or ``(H, W, 3)`` float64 in ``[0, 1]``.

    8-bit modes divide by 255, 16-bit greyscale (``I;16*``) by 65535, bilevel (``"1"``) is 0/1;
    ``"I"`` and ``"F"`` images (no depth recorded) divide by 255 when their values fit in 8 bits,
    else by 65535 (or their maximum beyond that), negatives clipped to 0, as :func:`to_8bit` does.
    Palette, alpha and CMYK images are converted to RGB (or ``"L"``) first.

    Examples:
        >>> import numpy as np
        >>> from PIL import Image
        >>> soft = Image.fromarray(np.array([[0, 19661, 45875, 65535]], dtype=np.uint16))  # 0, .3, .7, 1
        >>> np.round(unit_array(soft), 3).tolist()
        [[0.0, 0.3, 0.7, 1.0]]
    """
    if image.mode in _WIDE_MODES:
        return np.asarray(image, dtype=np.float64) / _WIDE_MODES[image.mode]
    if image.mode == "1":
        return np.asarray(image, dtype=np.float64)
    if image.mode in ("I", "F"):
        array = np.clip(np.asarray(image, dtype=np.float64), 0.0, None)
        return array / _peak(array, image)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB" if image.mode in ("RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV") else "L")
    return np.asarray(image, dtype=np.float64) / 255.0


def read_image(path: str | Path) -> Image.Image:
    """Read the image at ``path`` fully, keeping its mode and bit depth; ``.gz``-compressed files allowed.

    Args:
        path: Image file (``name.png.gz`` and the like are decompressed first).

    Returns:
        A loaded PIL image (the file is closed).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: The file is not an image PIL can read, is truncated, or is a ``.gz`` that is not
            gzip data or is cut short; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    source: Path | io.BytesIO = path
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path) as handle:
                source = io.BytesIO(handle.read())
        except (OSError, EOFError, zlib.error) as error:
            raise OSError(
                f"{path}: cannot decompress it ({error}); the .gz file is not gzip data or is truncated"
            ) from error
    try:
        with Image.open(source) as handle:
            handle.load()
            image = handle.copy()
    except UnidentifiedImageError as error:
        raise OSError(f"{path} is not an image file PIL can read") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise OSError(f"{path}: cannot read the image ({error}); the file may be truncated or corrupt") from error
    return image


def open_image(path: str | Path, mode: str | None = "RGB") -> Image.Image:
    """Read the image at ``path`` fully, scaled to 8 bits (:func:`to_8bit`) and converted to ``mode``.

    Args:
        path: Image file (``.gz``-compressed allowed, as in :func:`read_image`).
        mode: PIL mode to convert to (``"RGB"``, ``"L"``), or ``None`` to keep the 8-bit mode.

    Returns:
        A loaded PIL image (the file is closed).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: The file is not an image PIL can read, or is truncated; the message names it.

    Examples:
        >>> image = open_image("fundus/0001.png")  # doctest: +SKIP
    """
    image = to_8bit(read_image(path))
    if mode is not None and image.mode != mode:
        try:
            image = image.convert(mode)
        except ValueError as error:
            raise OSError(f"{path}: cannot convert its {image.mode!r} image to {mode!r} ({error})") from error
    return image
