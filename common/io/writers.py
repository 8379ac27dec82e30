"""Write segmentation results: NIfTI label volumes, PNG masks and per-structure volume tables (overlay previews:
:mod:`common.io.previews`).

Every file is written atomically: to a temporary file in the destination folder, then moved into place with
``os.replace``, so a reader never sees half a file and a failed write leaves no partial output.

Layouts: label volumes ``[X, Y, Z]`` in voxel index order with a (4, 4) index-to-RAS affine (the nibabel
convention of :mod:`common.io.volumes`); 2-D masks and images ``[H, W]`` (images may be ``[C, H, W]``) with
row 0 at the top of the picture.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from common.io.atomic import atomic_path
from common.io.lazy_volumes import LazyVolume

PngValues = Literal["labels", "binary255"]
ArrayLike = np.ndarray | torch.Tensor
COUNT_BLOCK = 1 << 22  # voxels per bincount in structure_volumes (32 MiB of intp at a time)
NIFTI_SLAB_SLICES = 16  # slices per read and write in write_volume_nifti
NIFTI_DATA_OFFSET = 352  # a single-file NIfTI-1: the 348-byte header, 4 bytes of extension flag, then the voxels


def as_label_array(labels: ArrayLike, where: str, max_value: int = 255) -> np.ndarray:
    """``labels`` (numpy or tensor, any device) as uint8, refusing non-integral or out-of-range values."""
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{where}: labels must be numeric, found dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > max_value or not np.array_equal(array, np.round(array))):
        raise ValueError(
            f"{where}: labels must be integers 0..{max_value}, found values in [{array.min()}, {array.max()}]"
        )
    return array.astype(np.uint8)


def check_affine(affine: ArrayLike, where: str) -> np.ndarray:
    affine = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) == 0:
        raise ValueError(f"{where}: expected a finite, invertible (4, 4) affine, found {affine.tolist()}")
    return affine


def write_nifti(labels: ArrayLike, affine: ArrayLike, path: str | os.PathLike) -> Path:
    """Write a uint8 label volume ``[X, Y, Z]`` (or ``[X, Y, Z, K]`` binary channels) with ``affine`` to ``.nii(.gz)``.

    The affine is stored as both qform and sform (code 1, scanner), so readers recover it exactly.
    """
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI file name must end with .nii or .nii.gz")
    array = as_label_array(labels, str(path))
    if array.ndim not in (3, 4):
        raise ValueError(f"{path}: expected labels [X, Y, Z] or [X, Y, Z, K], found shape {array.shape}")
    affine = check_affine(affine, str(path))
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as temporary:
        nib.save(image, temporary)
    return path


def write_volume_nifti(volume: LazyVolume, path: str | os.PathLike, slab_slices: int = NIFTI_SLAB_SLICES) -> Path:
    """Write an image volume ``[X, Y, Z]`` to an uncompressed ``.nii`` with its affine, ``slab_slices`` slices at
    a time, so that no more than a slab is held (a memory-mapped reader then reads it back slab by slab).

    Voxels are stored as int16 where every value is a whole number in int16's range (a CT in Hounsfield units,
    as SimpleITK converts a DICOM series), else as the volume's own type; this takes one extra read of the volume.
    """
    path = Path(path)
    if not path.name.endswith(".nii"):
        raise ValueError(f"{path}: expected an uncompressed NIfTI file name ending .nii")
    if len(volume.shape) != 3:
        raise ValueError(f"{volume.path}: expected an image volume [X, Y, Z], found shape {volume.shape}")
    affine = check_affine(volume.affine, str(volume.path))
    slabs = [(start, min(start + slab_slices, volume.shape[2])) for start in range(0, volume.shape[2], slab_slices)]
    own_type = volume.read((slice(None), slice(None), slice(0, 1))).dtype
    whole = np.can_cast(own_type, np.int16) or all(
        _whole_int16(volume.read((slice(None), slice(None), slice(start, stop)))) for start, stop in slabs
    )
    stored = np.dtype(np.int16) if whole else own_type
    header = nib.Nifti1Header()
    header.set_data_shape(volume.shape)
    header.set_data_dtype(stored)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    header["vox_offset"] = NIFTI_DATA_OFFSET
    with atomic_path(path) as temporary, open(temporary, "wb") as out:
        header.write_to(out)
        out.write(bytes(NIFTI_DATA_OFFSET - out.tell()))  # the extension flag: no extensions
        for start, stop in slabs:
            slab = volume.read((slice(None), slice(None), slice(start, stop)))
            voxels = slab.astype(stored.newbyteorder(header.endianness), order="F")  # x fastest, as NIfTI stores
            out.write(voxels.T.data)  # the same bytes, viewed C-contiguous for writing without a copy
    return path


def _whole_int16(values: np.ndarray) -> bool:
    """Whether every value is a whole number that int16 holds."""
    if values.dtype.kind in "iub":
        return values.size == 0 or (values.min() >= -32768 and values.max() <= 32767)
    if values.size and (values.min() < -32768 or values.max() > 32767):
        return False
    fraction = np.round(values)
    np.subtract(values, fraction, out=fraction)
    return not fraction.any()  # NaN is not whole either


def write_png_mask(mask: ArrayLike, path: str | os.PathLike, values: PngValues = "labels") -> Path:
    """Write a 2-D mask ``[H, W]`` as an 8-bit grey PNG.

    ``values="labels"`` stores the label values 0..K-1 as they are (what training data masks and the
    metrics read back); ``"binary255"`` stores a 0/1 mask as 0/255, as BUSI and HAM10000 distribute masks.
    """
    path = Path(path)
    array = as_label_array(mask, str(path))
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D mask [H, W], found shape {array.shape}")
    if values == "binary255":
        if array.size and array.max() > 1:
            raise ValueError(f"{path}: values='binary255' needs a 0/1 mask, found labels up to {array.max()}")
        array = array * np.uint8(255)
    elif values != "labels":
        raise ValueError(f"{path}: values must be 'labels' or 'binary255', got {values!r}")
    with atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")
    return path


def label_counts(labels: np.ndarray) -> np.ndarray:
    """Voxels of each value 0..255 in a uint8 label array (``[256]`` int64), counted a block at a time: neither a
    sorted copy (``np.unique``) nor an integer copy of the whole array (``np.bincount``) is made."""
    counts = np.zeros(256, dtype=np.int64)
    flat = labels.reshape(-1)  # a view where the array is contiguous
    for block in np.array_split(flat, max(1, flat.size // COUNT_BLOCK)):  # bincount makes an intp copy of a block
        counts += np.bincount(block, minlength=256)
    return counts


def structure_volumes(
    labels: ArrayLike, affine: ArrayLike, label_names: Mapping[int, str] | None = None
) -> list[dict[str, object]]:
    """Per-structure voxel counts and volumes in mL (voxel count x |det(affine[:3, :3])| / 1000).

    One row per named label and per other label present (background 0 excluded), in label order:
    ``{"label", "name", "voxels", "volume_ml"}``; a named label that is absent gets 0.
    """
    array = as_label_array(labels, "volume table")
    affine = check_affine(affine, "volume table")
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    counts = label_counts(array)
    names = dict(label_names or {})
    if any(not 0 < int(value) < 256 for value in names):
        raise ValueError(f"volume table: label names must be keyed by labels 1..255, found {sorted(names)}")
    values = sorted((set(names) | set(np.flatnonzero(counts).tolist())) - {0})
    return [
        {
            "label": value,
            "name": names.get(value, f"label_{value}"),
            "voxels": int(counts[value]),
            "volume_ml": float(counts[value]) * voxel_ml,
        }
        for value in values
    ]
