"""Read 3-D medical volumes as an array plus a 4x4 RAS affine (the nibabel convention).

Formats: NIfTI (``.nii``, ``.nii.gz``) through nibabel; NRRD (``.nrrd``, ``.nhdr``) and MetaImage
(``.mha``, ``.mhd``) through SimpleITK; a folder of DICOM files through
:mod:`common.io.dicom_series`; and the TransUNet Synapse release's HDF5 volumes (``.h5``).

Array axes follow the file's voxel index order ``(i, j, k)`` (plus a trailing channel axis for 4-D
files); the affine maps ``(i, j, k, 1)`` to RAS millimetres, as ``nibabel`` does. ``reorient`` brings
a volume to a canonical orientation (RAS by default).

2-D networks see an axial slice in the radiological display convention: rows run anterior to
posterior, columns run from the patient's right to left (how DICOM stores axial images and how the
TransUNet release stores its slices). ``ras_axial_to_display`` and ``display_to_ras_axial`` convert
between an axial slice of a RAS volume and that display layout; they are the single definition of
the in-plane layout used by training and inference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from common.io.orientation import LPS_TO_RAS
from common.io.validation import (
    VolumeReadError,
    check_volume_header,
    short_reason,
    spatial_shape,
    validated_volume_array,
)

if TYPE_CHECKING:
    import torch

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SIMPLEITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
HDF5_SUFFIXES = (".h5", ".hdf5")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + SIMPLEITK_SUFFIXES + HDF5_SUFFIXES


@dataclass(frozen=True)
class Volume:
    """A volume: ``array`` of shape (X, Y, Z) or (X, Y, Z, C) and a (4, 4) index-to-RAS ``affine``."""

    array: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three index axes."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def volume_suffix(path: str | os.PathLike) -> str:
    """The volume suffix of ``path`` (``.nii.gz`` counts as one); ``""`` when it is not a volume file."""
    name = Path(path).name.lower()
    return next((s for s in sorted(VOLUME_SUFFIXES, key=len, reverse=True) if name.endswith(s)), "")


def load_volume(path: str | os.PathLike, *, h5_key: str = "image") -> Volume:
    """Load a volume file, or a DICOM series folder, as a :class:`Volume`.

    ``h5_key`` names the HDF5 dataset to read from a TransUNet ``.npy.h5`` file. Those store a
    (D, H, W) stack of display-layout slices without geometry: the result gets the RAS layout that
    :func:`display_to_ras_axial` defines and an identity affine (1 mm voxels, since the release
    keeps no spacing).

    Every volume is checked (:mod:`common.io.validation`): the header before any data are read, the array and
    affine after; a 2-D file is read as one slice ``(X, Y, 1)`` and singleton dimensions after the third are
    dropped. Raises :class:`VolumeReadError` naming the file, what was expected and what was found.
    """
    path = Path(path)
    if path.is_dir():
        from common.io.dicom_series import read_dicom_series

        series = read_dicom_series(path)
        return _validated(Volume(series.array, series.affine, path))
    if not path.is_file():
        raise VolumeReadError(f"{path}: no such file or folder")
    suffix = volume_suffix(path)
    try:
        check_volume_header(path, suffix)
        if suffix in NIFTI_SUFFIXES:
            return _validated(_load_nifti(path))
        if suffix in SIMPLEITK_SUFFIXES:
            return _validated(_load_with_simpleitk(path))
        if suffix in HDF5_SUFFIXES:
            return _validated(_load_transunet_h5(path, h5_key))
    except VolumeReadError:
        raise
    except Exception as exc:  # any reader failure (truncated, corrupt): name the file
        raise VolumeReadError(f"{path}: cannot read this {suffix} file ({short_reason(exc)})") from exc
    raise VolumeReadError(f"{path}: not a volume file; expected one of {', '.join(VOLUME_SUFFIXES)} or a DICOM folder")


def volume_shape(path: str | os.PathLike, *, h5_key: str = "image") -> tuple[int, ...]:
    """The array shape :func:`load_volume` would return, read from the header where the format allows."""
    path = Path(path)
    suffix = volume_suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            return spatial_shape(path, nib.load(path).shape)
        if suffix in HDF5_SUFFIXES:
            import h5py

            with h5py.File(path, "r") as f:
                d, h, w = f[h5_key].shape
            return (w, h, d)
    except VolumeReadError:
        raise
    except Exception as exc:
        raise VolumeReadError(f"{path}: cannot read the header ({short_reason(exc)})") from exc
    return load_volume(path, h5_key=h5_key).array.shape


def _validated(volume: Volume) -> Volume:
    return Volume(validated_volume_array(volume.path, volume.array, volume.affine), volume.affine, volume.path)


def _load_nifti(path: Path) -> Volume:
    image = nib.load(path)
    array = np.asanyarray(image.dataobj)
    return Volume(np.asarray(array), np.asarray(image.affine, dtype=np.float64), path)


def _load_with_simpleitk(path: Path) -> Volume:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    dims = image.GetDimension()
    if dims not in (2, 3):
        raise VolumeReadError(
            f"{path}: expected a 3-D image (or a 2-D one, read as one slice); found {dims}-D of size {image.GetSize()}"
        )
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X) or (Z, Y, X, C); 2-D: (Y, X) or (Y, X, C)
    if dims == 2:
        array = array[None]
    array = np.moveaxis(array, (0, 1, 2), (2, 1, 0))
    affine = simpleitk_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
    return Volume(np.ascontiguousarray(array), affine, path)


def simpleitk_affine(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """The (4, 4) index-to-RAS affine of a 2-D or 3-D SimpleITK / ITK image from its (LPS) direction, spacing and
    origin (a 2-D image gets the identity for its missing third axis)."""
    dims = len(spacing)
    affine_lps = np.eye(4)
    affine_lps[:dims, :dims] = np.asarray(direction, dtype=np.float64).reshape(dims, dims) @ np.diag(spacing)
    affine_lps[:dims, 3] = origin
    return LPS_TO_RAS @ affine_lps


def _load_transunet_h5(path: Path, key: str) -> Volume:
    import h5py

    with h5py.File(path, "r") as f:
        if key not in f:
            raise VolumeReadError(f"{path}: no HDF5 dataset '{key}'; found {sorted(f.keys())}")
        stack = np.asarray(f[key])
    if stack.ndim != 3:
        raise VolumeReadError(f"{path}: dataset '{key}' should be D x H x W, found shape {stack.shape}")
    array = np.moveaxis(display_to_ras_axial(stack), 0, -1)  # (D, H, W) -> (X, Y, D)
    return Volume(np.ascontiguousarray(array), np.eye(4), path)


def reorient(volume: Volume, axcodes: str = "RAS") -> Volume:
    """Flip and permute the voxel axes so they point along ``axcodes``; the affine follows."""
    current = nib.orientations.io_orientation(volume.affine)
    target = nib.orientations.axcodes2ornt(tuple(axcodes))
    transform = nib.orientations.ornt_transform(current, target)
    array = nib.orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.array.shape[:3])
    return Volume(np.ascontiguousarray(array), affine, volume.path)


def ras_axial_to_display(array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Axial slice(s) of a RAS volume, (..., X, Y), to the display layout (..., H, W).

    ``display[h, w] = ras[X - 1 - w, Y - 1 - h]``: row 0 is the most anterior, column 0 the patient's
    rightmost voxel. Takes and returns a NumPy array or a torch tensor.
    """
    if isinstance(array, np.ndarray):
        return np.swapaxes(np.flip(array, (-2, -1)), -2, -1)
    return array.flip((-2, -1)).transpose(-2, -1)


def display_to_ras_axial(array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Inverse of :func:`ras_axial_to_display`: (..., H, W) display layout to (..., X, Y) RAS axes."""
    if isinstance(array, np.ndarray):
        return np.flip(np.swapaxes(array, -2, -1), (-2, -1))
    return array.transpose(-2, -1).flip((-2, -1))
