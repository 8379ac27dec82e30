"""Checks every volume file passes when read, so a bad input is refused in one or two plain lines.

Two stages, both raising :class:`VolumeReadError` with a message that names the file, says what was expected and
what was found (no library internals, no traceback):

- :func:`check_volume_header` runs before any pixel data is read or allocated. It reads the header of a NIfTI,
  NRRD or MetaImage file itself and checks that the data the header declares fits the file (a header claiming
  100000 x 100000 x 1000 voxels over a small file, a truncated file, a missing detached data file), that no
  dimension is zero, that the voxel type is one a bundle can take (greyscale integers or floats: RGB and complex
  voxels are refused) and that the array would fit in memory.
- :func:`validated_volume` runs on the array read: it squeezes singleton dimensions after the third (ITK writes
  vector images as X x Y x Z x 1 x C), reads a 2-D image as one slice (X, Y, 1), refuses more than one extra
  dimension, NaN or infinite voxels (with their count) and an affine that cannot map voxels to millimetres
  (not finite, or singular).

:class:`InputError` is the wider refusal of an input path or case that cannot be segmented (no case found, a
picture for a volume bundle, the wrong number of channels).
"""

from __future__ import annotations

import math
import os
import re
import zlib
from pathlib import Path

import numpy as np


class VolumeReadError(ValueError):
    """A volume file could not be read; the message names the file and the reason."""


class InputError(ValueError):
    """An input path or case cannot be segmented; the message names the file and what was expected."""


#: Bytes per voxel of the NRRD ``type`` and MetaImage ``ElementType`` values, and whether a bundle can take them.
NRRD_TYPES = {
    "signed char": 1,
    "int8": 1,
    "int8_t": 1,
    "uchar": 1,
    "unsigned char": 1,
    "uint8": 1,
    "uint8_t": 1,
    "short": 2,
    "short int": 2,
    "signed short": 2,
    "signed short int": 2,
    "int16": 2,
    "int16_t": 2,
    "ushort": 2,
    "unsigned short": 2,
    "unsigned short int": 2,
    "uint16": 2,
    "uint16_t": 2,
    "int": 4,
    "signed int": 4,
    "int32": 4,
    "int32_t": 4,
    "uint": 4,
    "unsigned int": 4,
    "uint32": 4,
    "uint32_t": 4,
    "longlong": 8,
    "long long": 8,
    "long long int": 8,
    "signed long long": 8,
    "signed long long int": 8,
    "int64": 8,
    "int64_t": 8,
    "ulonglong": 8,
    "unsigned long long": 8,
    "unsigned long long int": 8,
    "uint64": 8,
    "uint64_t": 8,
    "float": 4,
    "double": 8,
}
META_TYPES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
HEADER_LIMIT = 1 << 16  # text headers longer than this are not NRRD / MetaImage headers


def check_volume_header(path: Path, suffix: str) -> None:
    """Refuse ``path`` (a ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file) before reading its
    data when its header is unusable or declares more data than the file holds; other suffixes pass."""
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_header(path)
    elif suffix in (".nrrd", ".nhdr"):
        _check_nrrd_header(path)
    elif suffix in (".mha", ".mhd"):
        _check_metaimage_header(path)


def validated_volume_array(path: Path, array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``array`` as (X, Y, Z) or (X, Y, Z, C) after the checks above; raises :class:`VolumeReadError`."""
    shape = spatial_shape(path, array.shape)
    array = array.reshape(shape)
    if array.dtype.kind not in "biuf":
        raise VolumeReadError(f"{path}: expected greyscale voxels (integers or floats); found {_describe(array.dtype)}")
    if array.dtype.kind == "f":
        check_finite_counts(path, *count_nonfinite(array), array.size)
    check_affine(path, affine)
    return array


def count_nonfinite(array: np.ndarray) -> tuple[int, int]:
    """How many NaN and how many infinite values ``array`` holds."""
    finite = np.isfinite(array)
    if finite.all():
        return 0, 0
    nan = int(np.isnan(array).sum())
    return nan, int(array.size - finite.sum()) - nan


def check_finite_counts(path: Path, nan: int, infinite: int, size: int) -> None:
    """Refuse a volume of ``size`` voxels with ``nan`` NaN and ``infinite`` infinite values, if there are any."""
    if nan or infinite:
        raise VolumeReadError(
            f"{path}: expected finite voxel values; found {nan} NaN and {infinite} infinite voxel(s) "
            f"of {size} (replace them, e.g. with the background value, and try again)"
        )


def spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The (X, Y, Z) or (X, Y, Z, C) shape a file of array shape ``shape`` is read as; raises when there is none.

    Dimensions of size 1 after the third are dropped; a 2-D image is one slice, (X, Y, 1).
    """
    shape = tuple(int(n) for n in shape)
    if 0 in shape or not shape:
        raise VolumeReadError(f"{path}: expected a volume with voxels; found shape {shape} (no voxels)")
    kept = shape[:3] + tuple(n for n in shape[3:] if n != 1)
    if len(kept) == 1:
        raise VolumeReadError(f"{path}: expected a 3-D volume (X, Y, Z); found a 1-D array of shape {shape}")
    if len(kept) == 2:
        return (*kept, 1)
    if len(kept) > 4:
        raise VolumeReadError(f"{path}: expected a 3-D volume (X, Y, Z), or (X, Y, Z, channels); found shape {shape}")
    return kept


def check_affine(path: Path, affine: np.ndarray) -> None:
    """Refuse an affine that is not finite or whose 3 x 3 part is singular (a zero voxel size, collinear axes)."""
    matrix = np.asarray(affine, dtype=np.float64)
    sizes = np.linalg.norm(matrix[:3, :3], axis=0) if np.isfinite(matrix).all() else None
    if sizes is None or sizes.min() <= 0 or abs(np.linalg.det(matrix[:3, :3])) < 1e-6 * np.prod(sizes):
        shown = np.array2string(matrix[:3], precision=4, suppress_small=True, separator=", ").replace("\n", "")
        raise VolumeReadError(
            f"{path}: expected a voxel-to-millimetre affine with non-zero voxel sizes and independent axes; "
            f"found {shown}"
        )


def short_reason(exc: BaseException) -> str:
    """A one-line reason from a reader's exception: no C++ source paths, ITK banners or object addresses."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not re.search(r"\.(cxx|cpp|h|hxx|txx):\d+", line)] or lines or [""]
    reason = re.sub(r"^(sitk::ERROR|itk::ERROR|ERROR):\s*", "", useful[-1])
    reason = re.sub(r"\w+\(0x[0-9a-f]+\):\s*", "", reason)
    reason = re.sub(r" at 0x[0-9a-f]+", "", reason)
    return f"{type(exc).__name__}: {reason}"[:300] if reason else type(exc).__name__


# ----------------------------------------------------------------------------- NIfTI


def _check_nifti_header(path: Path) -> None:
    import nibabel as nib

    try:
        image = nib.load(path)
        header, offset = image.header, int(getattr(image.dataobj, "offset", 0) or image.header.sizeof_hdr)
    except Exception as exc:
        raise VolumeReadError(
            f"{path}: expected a NIfTI-1 or NIfTI-2 header; found an unreadable or truncated file of "
            f"{path.stat().st_size} bytes"
        ) from exc
    shape = tuple(int(n) for n in header.get_data_shape())
    dtype = header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise VolumeReadError(f"{path}: expected greyscale voxels (integers or floats); found {_describe(dtype)}")
    spatial_shape(path, shape)
    expected = math.prod(shape) * dtype.itemsize
    _check_data_length(path, path, expected, offset, gzipped=path.name.lower().endswith(".gz"), shape=shape)
    _check_fits_in_memory(path, shape, expected)


# ----------------------------------------------------------------------------- NRRD and MetaImage


def _nrrd_header(path: Path) -> tuple[list[str], int]:
    """The header lines of a NRRD file and the byte offset of its data (after the first empty line)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_LIMIT)
    ends = [(head.find(end), len(end)) for end in (b"\n\n", b"\r\n\r\n") if head.find(end) >= 0]
    stop, length = min(ends) if ends else (len(head), 0)
    return head[:stop].decode("latin-1").splitlines(), stop + length


def _check_nrrd_header(path: Path) -> None:
    lines, offset = _nrrd_header(path)
    if not lines or not lines[0].startswith("NRRD"):
        raise VolumeReadError(f"{path}: expected a NRRD file (starting 'NRRD000x'); found {lines[:1] or 'nothing'}")
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    sizes = _integers(path, "sizes", fields.get("sizes"))
    kind = fields.get("type", "").lower()
    if kind not in NRRD_TYPES:
        raise VolumeReadError(f"{path}: expected a greyscale integer or float voxel type; found type '{kind}'")
    spatial_shape(path, tuple(sizes))
    encoding = fields.get("encoding", "raw").lower()
    expected = math.prod(sizes) * NRRD_TYPES[kind]
    data_file = fields.get("data file", fields.get("datafile"))
    source = path if data_file is None else path.parent / data_file
    if data_file is not None:
        offset = 0
    skip = int(fields.get("byte skip", "0") or 0)  # raw: bytes before the data (-1: the data end the file);
    if encoding == "raw":  # compressed: bytes of the expanded stream before the data
        offset = offset + skip if skip >= 0 else 0
    elif skip > 0:
        expected += skip
    if data_file is not None and ("%" in data_file or data_file.upper().startswith("LIST")):
        pass  # several data files: left to the reader
    elif encoding in ("raw", "gzip", "gz"):
        _check_data_length(path, source, expected, offset, gzipped=encoding != "raw", shape=tuple(sizes))
    _check_fits_in_memory(path, tuple(sizes), expected)


def _check_metaimage_header(path: Path) -> None:
    fields: dict[str, str] = {}
    offset = 0  # the header ends with its ElementDataFile line
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            line = raw.decode("latin-1").strip()
            if "=" not in line:
                raise VolumeReadError(
                    f"{path}: expected a MetaImage header of 'Key = Value' lines; found {line[:60]!r}"
                )
            key, value = (part.strip() for part in line.split("=", 1))
            fields[key.lower()] = value
            if key.lower() == "elementdatafile" or offset > HEADER_LIMIT:
                break
    sizes = _integers(path, "DimSize", fields.get("dimsize"))
    kind = fields.get("elementtype", "")
    if kind not in META_TYPES:
        raise VolumeReadError(f"{path}: expected a greyscale integer or float ElementType; found '{kind}'")
    channels = int(fields.get("elementnumberofchannels", "1") or 1)
    shape = (*sizes, channels) if channels != 1 else tuple(sizes)
    spatial_shape(path, shape)
    expected = math.prod(shape) * META_TYPES[kind]
    data_file = fields.get("elementdatafile", "")
    if data_file.upper() == "LOCAL":
        source = path
    elif data_file and "%" not in data_file and data_file.upper() != "LIST":
        source, offset = path.parent / data_file, 0
    else:
        source = None  # file lists and patterns are left to the reader
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if source is not None and compressed and "compresseddatasize" in fields:
        _check_data_length(
            path, source, int(fields["compresseddatasize"]), offset, gzipped=False, shape=shape, what="compressed bytes"
        )
    elif source is not None:
        _check_data_length(path, source, expected, offset, gzipped=compressed, shape=shape)
    _check_fits_in_memory(path, shape, expected)


def _integers(path: Path, name: str, text: str | None) -> list[int]:
    try:
        values = [int(v) for v in (text or "").split()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise VolumeReadError(f"{path}: expected '{name}' with the image size in the header; found {text!r}")
    return values


# ----------------------------------------------------------------------------- sizes


def _check_fits_in_memory(path: Path, shape: tuple[int, ...], expected: int) -> None:
    """Refuse a header whose array (read as float32 at least) could not be held in this machine's memory."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    needed = max(expected, math.prod(shape) * 4)
    if needed > memory:
        raise VolumeReadError(
            f"{path}: the header declares {' x '.join(map(str, shape))} voxels ({needed / 1e9:.1f} GB as float32), "
            f"more than this machine's {memory / 1e9:.1f} GB of memory; expected a volume that fits"
        )


def _check_data_length(
    path: Path,
    source: Path,
    expected: int,
    offset: int,
    *,
    gzipped: bool,
    shape: tuple[int, ...],
    what: str = "bytes of voxel data",
) -> None:
    """Compare the bytes of voxel data the header declares with what ``source`` holds after ``offset``."""
    if not source.is_file():
        raise VolumeReadError(f"{path}: its header names the data file {source.name}, which does not exist")
    if not gzipped:
        _check_length(path, source, expected, offset, shape, what)
        return
    if path is source and path.name.lower().endswith(".gz"):
        found = _gzip_length(source, expected + offset)  # the whole file is compressed (.nii.gz)
        if found < expected + offset:
            raise VolumeReadError(
                f"{path}: the header declares {' x '.join(map(str, shape))} voxels ({expected + offset} bytes "
                f"with the header); the file expands to {found} (truncated, or a corrupt header)"
            )
        return
    found = _compressed_length(source, offset, expected)
    if found < expected:
        raise VolumeReadError(
            f"{path}: the header declares {' x '.join(map(str, shape))} voxels ({expected} bytes); the compressed "
            f"data expands to {found} bytes (truncated, or a corrupt header)"
        )


def _check_length(path: Path, source: Path, expected: int, offset: int, shape: tuple[int, ...], what: str) -> None:
    found = source.stat().st_size - offset
    if found < expected:
        where = "" if source == path else f" in {source.name}"
        raise VolumeReadError(
            f"{path}: the header declares {' x '.join(map(str, shape))} voxels ({expected} {what}); "
            f"the file holds {max(found, 0)}{where} (truncated, or a corrupt header)"
        )


def _gzip_length(source: Path, limit: int) -> int:
    """How many bytes the gzip file ``source`` expands to, counted up to a little past ``limit``.

    The gzip trailer's size field gives it at once when it agrees; otherwise (multi-member files, sizes over
    4 GiB, truncation) the data are decompressed in blocks, without keeping them.
    """
    with open(source, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() >= 18:
            f.seek(-4, os.SEEK_END)
            trailer = int.from_bytes(f.read(4), "little")
            if trailer == limit % (1 << 32) and limit < (1 << 32):
                return limit
    return _compressed_length(source, 0, limit)


def _compressed_length(source: Path, offset: int, limit: int) -> int:
    """Bytes the compressed data after ``offset`` expand to (gzip, several members included, or zlib for
    MetaImage), counted up to a little past ``limit`` without keeping them; a truncated stream counts what it
    holds."""
    total = 0
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # | 32: a gzip or a zlib header, whichever is there
    try:
        with open(source, "rb") as f:
            f.seek(offset)
            while total <= limit:
                block = f.read(1 << 20)
                if not block:
                    break
                while block and total <= limit:
                    total += len(inflater.decompress(block, 1 << 24))
                    block = inflater.unconsumed_tail
                    if inflater.eof:  # the next gzip member, if any
                        block, inflater = inflater.unused_data + block, zlib.decompressobj(zlib.MAX_WBITS | 32)
                        if not block.strip(b"\0"):
                            break
    except zlib.error:
        pass  # corrupt from here on: what was read so far is what the file holds
    return total


def _describe(dtype: np.dtype) -> str:
    if dtype.fields is not None:
        names = "".join(dtype.names or ())
        kinds = {str(dtype.fields[name][0]) for name in dtype.names or ()}
        label = "RGB24" if names == "RGB" else "RGBA32" if names == "RGBA" else f"a record of fields {dtype.names}"
        return f"{label} voxels ({len(dtype.names or ())} x {'/'.join(sorted(kinds))} per voxel)"
    return {"c": f"complex voxels ({dtype})", "U": "text", "S": "bytes", "O": "Python objects"}.get(
        dtype.kind, f"voxels of type {dtype}"
    )
