"""Read 2-D images and masks (PNG, JPEG, BMP, TIFF, and arrays inside ``.npz`` files) channel first.

Arrays keep the file's row-major layout: (C, H, W), row 0 at the top of the picture.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_THRESHOLD = 127  # 8-bit masks store 0 / 255; anything above half the range is foreground


class ImageReadError(ValueError):
    """A 2-D image or mask could not be read, or is not what was expected; the message names the file."""


def read_image_2d(path: str | os.PathLike, channels: int | None = None, array_name: str = "image") -> np.ndarray:
    """Read a picture (or the array ``array_name`` of an ``.npz``) as (C, H, W) in its stored dtype.

    ``channels`` 1 or 3 converts grey/colour as needed (a 16-bit grey picture keeps its range and is
    repeated to 3 channels); ``None`` keeps what the file holds.
    """
    path = Path(path)
    try:
        array = _read_npz_array(path, array_name) if path.suffix.lower() == ".npz" else _read_picture(path, channels)
    except ImageReadError:
        raise
    except Exception as exc:  # truncated or corrupt files: name the file
        raise ImageReadError(f"{path}: cannot read this image ({type(exc).__name__}: {exc})") from exc
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    else:
        raise ImageReadError(f"{path}: expected a 2-D image, found an array of shape {array.shape}")
    if channels == 3 and array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    if channels is not None and array.shape[0] != channels:
        raise ImageReadError(f"{path}: expected {channels} channel(s), found {array.shape[0]}")
    return np.ascontiguousarray(array)


def picture_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of a picture, read from its header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot read this image ({type(exc).__name__}: {exc})") from exc
    return height, width


def read_mask_values(path: str | os.PathLike) -> np.ndarray:
    """An 8-bit mask picture as (H, W) uint8 with its stored values (colour masks become grey)."""
    return read_image_2d(path, channels=1)[0].astype(np.uint8)


def read_binary_mask(paths: str | os.PathLike | list, threshold: int = MASK_THRESHOLD) -> np.ndarray:
    """The union of one or more mask pictures as (1, H, W) uint8 in {0, 1}.

    Public datasets store 0/255 (foreground above ``threshold``); masks saved by annotation tools store label
    values 0/1, read as they are.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ImageReadError("no mask files given")
    union = None
    for path in paths:
        values = read_mask_values(path)
        mask = values > (threshold if values.max(initial=0) > 1 else 0)
        if union is not None and mask.shape != union.shape:
            raise ImageReadError(
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but {paths[0]} is {union.shape[1]}x{union.shape[0]}"
            )
        union = mask if union is None else union | mask
    return union[None].astype(np.uint8)


def _read_picture(path: Path, channels: int | None) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        if channels == 3 and image.mode in ("L", "P", "RGBA", "LA", "1", "CMYK", "YCbCr"):
            image = image.convert("RGB")
        elif channels == 1 and image.mode in ("RGB", "RGBA", "P", "LA", "1", "CMYK", "YCbCr"):
            image = image.convert("L")
        elif image.mode in ("P", "1"):
            image = image.convert("L")
        return np.array(image)


def _read_npz_array(path: Path, name: str) -> np.ndarray:
    with np.load(path) as archive:
        if name not in archive.files:
            raise ImageReadError(f"{path}: no array '{name}'; found {archive.files}")
        return archive[name]
