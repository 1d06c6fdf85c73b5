"""Reading image files: every loader in qualcl opens images here, so they all agree on bit depth and errors.

PIL converts a 16-bit greyscale image (``I;16`` PNG, TIFF) to 8 bits by *clipping* at 255, which
turns almost every pixel of a 16-bit X-ray white. :func:`open_image` scales by the bit depth
instead (65535 → 255), and turns a truncated or unreadable file into an error that names it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["open_image", "to_8bit"]

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


def open_image(path: str | Path, mode: str | None = "RGB") -> Image.Image:
    """Read the image at ``path`` fully, scaled to 8 bits (:func:`to_8bit`) and converted to ``mode``.

    Args:
        path: Image file.
        mode: PIL mode to convert to (``"RGB"``, ``"L"``), or ``None`` to keep the 8-bit mode.

    Returns:
        A loaded PIL image (the file is closed).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: The file is not an image PIL can read, or is truncated; the message names it.

    Examples:
        >>> image = open_image("fundus/0001.png")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as handle:
            handle.load()
            image = to_8bit(handle)
            if mode is not None and image.mode != mode:
                image = image.convert(mode)
            elif image is handle:
                image = handle.copy()
    except UnidentifiedImageError as error:
        raise OSError(f"{path} is not an image file PIL can read") from error
    except OSError as error:
        raise OSError(f"{path}: cannot read the image ({error}); the file may be truncated or corrupt") from error
    return image
