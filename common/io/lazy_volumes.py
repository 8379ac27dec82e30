"""Volumes read on demand, a slab of slices at a time, so memory does not grow with a copy of the whole volume.

:func:`open_lazy_volume` opens what :func:`common.io.volumes.load_volume` reads, without reading the voxels:

- NIfTI through nibabel's array proxy: a slab of an uncompressed ``.nii`` reads only its bytes; a ``.nii.gz``
  through the same proxy over its gzip stream (:class:`common.io.indexed_gzip.IndexedGzipFile`): a slab is
  decompressed when it is read, from the nearest access point before it (one every 4 MiB of voxels, about 40 KiB
  each), so slabs are read in any order without keeping the voxels and without decompressing from the start for
  every slab read against the file order (``gzip``'s own backward seek: 247 s instead of 10 s for 200 slices of
  512 x 512 read back to front). Slabs along another axis than the file's last spatial one would each span the
  whole stream, so for those (:meth:`LazyVolume.for_slabs_along`) the stored voxels are decompressed into memory
  once (int16 stays int16; scaling is applied per slab);
- NRRD and MetaImage with raw (uncompressed) data, attached or in a detached data file, through the same array
  proxy set at the data's offset (the geometry comes from SimpleITK's header reader, as :func:`load_volume` gets
  it): a slab is read from the file, not memory-mapped, because a map's pages count toward the process's resident
  memory once touched, for as long as the volume is open (a 600-slice CT: 300 MiB more at the peak); compressed
  ones are read once by SimpleITK, whose buffer is then used without a copy;
- DICOM series folders through :func:`common.io.dicom_series.read_dicom_series` with ``lazy=True``: a slab reads
  only its slices' files (multi-frame files are read once);
- anything else (HDF5, 2-D files, files with extra singleton dimensions) is read by :func:`load_volume` and
  served from memory.

A slab holds the same values as the same part of :func:`load_volume`'s array (NIfTI scaling and byte order
applied). :class:`OrientedSlabs` reads slabs in a canonical orientation (the bundles' ``Orientationd``) without
reorienting the volume, and :func:`oriented_view` gives a writable reoriented view of an output array, so labels
predicted in that orientation land in the input's own voxel grid with no copy.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.io.dicom_series import DicomSeries, DicomSlices, read_dicom_series
from common.io.indexed_gzip import IndexedGzipFile
from common.io.validation import (
    check_affine,
    check_finite_counts,
    check_volume_header,
    count_nonfinite,
    short_reason,
    spatial_shape,
)
from common.io.volumes import (
    NIFTI_SUFFIXES,
    SIMPLEITK_SUFFIXES,
    Volume,
    VolumeReadError,
    load_volume,
    simpleitk_affine,
    volume_suffix,
)

Orientation = np.ndarray  # nibabel orientation transform, (3, 2): [target axis, flip] per source axis
DEFAULT_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
FINITE_CHECK_SLICES = 32  # slices per read when floating-point voxels are checked for NaN / inf


@dataclass(frozen=True)
class LazyVolume:
    """A volume whose voxels are read on demand: ``data`` is anything sliced like an array (a nibabel array
    proxy, a :class:`DicomSlices`, an array) of shape (X, Y, Z) or (X, Y, Z, C); ``affine`` maps
    index to RAS mm; ``series`` holds the headers and files of a DICOM series (``None`` for other sources)."""

    data: Any
    affine: np.ndarray
    path: Path
    series: DicomSeries | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    def read(self, index: tuple[slice | int, ...]) -> np.ndarray:
        """The voxels at ``index`` (basic slicing), as :func:`load_volume`'s array holds them, in native byte order."""
        array = np.asarray(self.data[index])
        return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))

    def load(self) -> Volume:
        """The whole volume in memory, as :func:`load_volume` returns it."""
        return Volume(self.read((slice(None),) * len(self.shape)), self.affine, self.path)

    def for_slabs_along(self, axis: int) -> LazyVolume:
        """This volume for reading slabs along spatial ``axis``: itself, except that a ``.nii.gz`` read from its
        gzip stream is decompressed into memory (its stored bytes, once) for an axis other than its last spatial
        one, along which each slab would span the whole stream."""
        stream = getattr(self.data, "file_like", None)
        if axis == 2 or not isinstance(stream, IndexedGzipFile):
            return self
        return dataclasses.replace(self, data=_decompressed_nifti(self.data).dataobj)


def open_lazy_volume(path: str | os.PathLike, *, series_uid: str | None = None) -> LazyVolume:
    """Open the volume file or DICOM series folder at ``path`` for reading slabs; see the module docstring.

    The volume is validated as :func:`common.io.volumes.load_volume` validates it (header before any data, then
    shape, voxel type, affine, and finite values slab by slab), so a refusal comes before any network runs.
    ``series_uid`` picks the series of a DICOM folder holding several.
    """
    path = Path(path)
    if path.is_dir():
        series = read_dicom_series(path, series_uid, lazy=True)
        return _validated(LazyVolume(series.array, series.affine, path, series))
    suffix = volume_suffix(path) if path.is_file() else ""
    try:
        if suffix in NIFTI_SUFFIXES or suffix in SIMPLEITK_SUFFIXES:
            check_volume_header(path, suffix)
        if suffix in NIFTI_SUFFIXES:
            image = _streamed_nifti(path) if suffix == ".nii.gz" else nib.load(path)
            lazy = LazyVolume(image.dataobj, np.asarray(image.affine, dtype=np.float64), path)
            if _streamable(lazy, np.dtype(image.get_data_dtype())):
                return _validated(lazy)
        elif suffix in SIMPLEITK_SUFFIXES:
            raw = _raw_metaimage_or_nrrd(path)
            if raw is not None and _streamable(raw, raw.data.dtype):
                return _validated(raw)
    except VolumeReadError:
        raise
    except Exception as exc:
        raise VolumeReadError(f"{path}: cannot read this {suffix} file ({short_reason(exc)})") from exc
    volume = load_volume(path)  # other layouts (2-D, singleton dimensions, several files, HDF5...): read whole
    return LazyVolume(volume.array, volume.affine, volume.path)


def _streamable(volume: LazyVolume, stored: np.dtype) -> bool:
    """Whether ``volume`` can be served slab by slab as it is: stored as greyscale numbers in the (X, Y, Z) or
    (X, Y, Z, C) shape it is read as (else :func:`load_volume` reads it whole, and refuses it if it must)."""
    try:
        return stored.kind in "biuf" and spatial_shape(volume.path, volume.shape) == volume.shape
    except VolumeReadError:
        return False


def _validated(volume: LazyVolume) -> LazyVolume:
    """``volume`` after :func:`common.io.validation.check_affine` and, for floating-point voxels, a count of the
    non-finite values over slabs of slices (integer voxels are finite by type)."""
    check_affine(volume.path, volume.affine)
    if np.dtype(volume.data.dtype).kind == "f" and not isinstance(volume.data, DicomSlices):
        nan = infinite = 0
        depth = volume.shape[2]
        for start in range(0, depth, FINITE_CHECK_SLICES):
            index = (slice(None), slice(None), slice(start, min(start + FINITE_CHECK_SLICES, depth)))
            counts = count_nonfinite(volume.read(index))
            nan, infinite = nan + counts[0], infinite + counts[1]
        check_finite_counts(volume.path, nan, infinite, int(np.prod(volume.shape)))
    return volume


def _streamed_nifti(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """A ``.nii.gz`` with an array proxy over its gzip stream (:class:`IndexedGzipFile`): a slab is decompressed
    when it is read. Only the header is read here (:func:`check_volume_header` has checked that the stream holds
    the declared bytes: a truncated file is refused before any network runs; a corrupt one when the slab that
    reaches the damage is read)."""
    return _nifti_over(IndexedGzipFile(path))


def _nifti_over(fileobj: io.RawIOBase) -> nib.Nifti1Image | nib.Nifti2Image:
    """The NIfTI-1 or NIfTI-2 image (by its ``sizeof_hdr``, in either byte order) of a seekable file of a NIfTI's
    bytes, its voxels behind an array proxy over ``fileobj``."""
    fileobj.seek(0)
    start = fileobj.read(4)
    header_size = int(np.frombuffer(start, dtype="<i4")[0]) if len(start) == 4 else 0
    kind = nib.Nifti2Image if header_size in (540, 540 << 24 & 0xFFFFFFFF) else nib.Nifti1Image
    fileobj.seek(0)
    source = nib.FileHolder(fileobj=fileobj)
    return kind.from_file_map({"header": source, "image": source})


def _decompressed_nifti(proxy: nib.arrayproxy.ArrayProxy) -> nib.Nifti1Image | nib.Nifti2Image:
    """The ``.nii.gz`` behind ``proxy`` (over an :class:`IndexedGzipFile`) decompressed into one buffer of the
    file's own bytes up to the end of its voxels (their stored dtype, unscaled), with an array proxy over it, for
    slabs along an axis other than the file's last spatial one (each would span the whole stream). The buffer is
    sized from the header and filled in place, in one pass: no second, transient copy."""
    stream = proxy.file_like
    buffer = bytearray(int(proxy.offset) + int(np.prod(proxy.shape, dtype=np.int64)) * proxy.dtype.itemsize)
    stream.seek(0)
    if (filled := stream.readinto(buffer)) < len(buffer):
        raise VolumeReadError(f"{stream.path}: the file ends after {filled} bytes; its header needs {len(buffer)}")
    return _nifti_over(_BufferFile(buffer))


class _BufferFile(io.RawIOBase):
    """A read-only, seekable file over an in-memory buffer, without a copy of it (``io.BytesIO`` copies a
    ``bytearray``)."""

    def __init__(self, buffer: bytearray):
        super().__init__()
        self._view, self._position = memoryview(buffer), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, target) -> int:
        count = max(0, min(len(target), len(self._view) - self._position))
        target[:count] = self._view[self._position : self._position + count]
        self._position += count
        return count


def as_lazy_volume(volume: Volume | LazyVolume) -> LazyVolume:
    """``volume`` as a :class:`LazyVolume` (an in-memory :class:`Volume` is served from its array)."""
    return volume if isinstance(volume, LazyVolume) else LazyVolume(volume.array, volume.affine, volume.path)


# ----------------------------------------------------------------------------- raw NRRD / MetaImage


def _read_header_lines(path: Path, limit: int = 1 << 20) -> tuple[list[str], int]:
    """The text header of an NRRD or MetaImage file as lines, and the byte offset just after it (NRRD: after
    the blank line; MetaImage: after the ``ElementDataFile`` line)."""
    with open(path, "rb") as handle:
        head = handle.read(limit)
    lines, offset = [], 0
    nrrd = head.startswith(b"NRRD")
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        line = raw.decode("latin-1").rstrip("\r\n")
        if nrrd and not line:
            break
        lines.append(line)
        if not nrrd and line.replace(" ", "").lower().startswith("elementdatafile="):
            break
    return lines, offset


def _header_fields(lines: list[str], nrrd: bool) -> dict[str, str]:
    pattern = re.compile(r"^([^:#=]+?)\s*:=?\s*(.*)$" if nrrd else r"^([^=]+?)\s*=\s*(.*)$")
    fields = {}
    for line in lines[1:] if nrrd else lines:
        match = pattern.match(line)
        if match and not line.startswith("#"):
            fields[match.group(1).strip().lower()] = match.group(2).strip()
    return fields


def _raw_metaimage_or_nrrd(path: Path) -> LazyVolume | None:
    """An NRRD / MetaImage file's raw data behind an array proxy (read on slicing, no memory map), or ``None``
    when the data is compressed, split over several files or has several components (then it is read whole)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        return None
    dtype = _sitk_dtypes().get(reader.GetPixelID())
    if dtype is None:
        return None
    lines, header_end = _read_header_lines(path)
    nrrd = bool(lines) and lines[0].startswith("NRRD")
    fields = _header_fields(lines, nrrd)
    if nrrd:
        if fields.get("encoding", "raw").lower() != "raw" or fields.get("line skip", "0") != "0":
            return None
        detached = fields.get("data file") or fields.get("datafile")
        big_endian = fields.get("endian", "little").lower() == "big"
    else:
        if fields.get("compresseddata", "false").lower() == "true":
            return None
        detached = fields.get("elementdatafile")
        detached = None if detached is None or detached.upper() == "LOCAL" else detached
        big_endian = "true" in (
            fields.get("binarydatabyteordermsb", "").lower(),
            fields.get("elementbyteordermsb", "").lower(),
        )
    if detached is not None and (" " in detached or detached.upper().startswith("LIST")):
        return None  # a file pattern or a list of slice files
    data_path = path.parent / detached if detached is not None else path
    size = tuple(int(v) for v in reader.GetSize())  # (X, Y, Z)
    dtype = np.dtype(dtype).newbyteorder(">" if big_endian else "<")
    nbytes = int(np.prod(size)) * dtype.itemsize
    file_size = data_path.stat().st_size
    offset = file_size - nbytes  # raw data ends the file (any byte skip or header size is ahead of it)
    if offset < (0 if detached is not None else header_end):
        raise VolumeReadError(
            f"{path}: the header describes {nbytes} bytes of {dtype} voxels {size}, but "
            f"{data_path.name} holds only {file_size - (0 if detached else header_end)} after its header"
        )
    proxy = nib.arrayproxy.ArrayProxy(data_path, (size, dtype, offset), mmap=False, order="F")  # X runs fastest
    affine = simpleitk_affine(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin())
    return LazyVolume(proxy, affine, path)


@functools.cache
def _sitk_dtypes() -> dict[int, type]:
    """SimpleITK pixel ids -> numpy types (SimpleITK is imported on first use: it holds ~90 MiB resident)."""
    import SimpleITK as sitk

    return {
        sitk.sitkUInt8: np.uint8,
        sitk.sitkInt8: np.int8,
        sitk.sitkUInt16: np.uint16,
        sitk.sitkInt16: np.int16,
        sitk.sitkUInt32: np.uint32,
        sitk.sitkInt32: np.int32,
        sitk.sitkUInt64: np.uint64,
        sitk.sitkInt64: np.int64,
        sitk.sitkFloat32: np.float32,
        sitk.sitkFloat64: np.float64,
    }


# ----------------------------------------------------------------------------- orientation


def orientation_transform(
    affine: np.ndarray, axcodes: str, labels: Sequence[Sequence[str]] | None = None
) -> Orientation:
    """The flips and permutation that bring voxel axes with index-to-RAS ``affine`` to ``axcodes``, as MONAI's
    ``Orientation`` and :func:`common.io.volumes.reorient` compute them."""
    current = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    target = nib.orientations.axcodes2ornt(tuple(axcodes), labels=labels or DEFAULT_LABELS)
    return nib.orientations.ornt_transform(current, target)


def oriented_view(array: np.ndarray, transform: Orientation) -> np.ndarray:
    """``array`` (spatial axes first) flipped and permuted by ``transform``: a view, writable if ``array`` is."""
    return nib.orientations.apply_orientation(array, transform)


class OrientedSlabs:
    """Slabs of slices of a :class:`LazyVolume` along the last axis of its ``transform``-ed orientation.

    ``shape`` is the reoriented volume's; :meth:`slab` reads only the voxels it returns.
    """

    def __init__(self, volume: LazyVolume, transform: Orientation):
        self.transform = np.asarray(transform)
        self.source_axis = int(np.flatnonzero(self.transform[:, 0] == 2)[0])  # which file axis the slices run along
        self.volume = volume.for_slabs_along(self.source_axis)
        self.flipped = self.transform[self.source_axis, 1] < 0
        shape = volume.shape
        self.shape = tuple(shape[int(np.flatnonzero(self.transform[:, 0] == k)[0])] for k in range(3)) + shape[3:]

    @property
    def num_slices(self) -> int:
        return self.shape[2]

    def slab(self, start: int, stop: int) -> np.ndarray:
        """Reoriented slices ``start..stop-1``: ``[X', Y', stop - start]`` (``[X', Y', n, C]`` for 4-D volumes)."""
        n = self.volume.shape[self.source_axis]
        low, high = (n - stop, n - start) if self.flipped else (start, stop)
        index = [slice(None)] * len(self.volume.shape)
        index[self.source_axis] = slice(low, high)
        return oriented_view(self.volume.read(tuple(index)), self.transform)
