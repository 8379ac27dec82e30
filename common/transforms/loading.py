"""Loading transforms: volume files, 2-D pictures, masks and run-length labels as channel-first tensors.

- :class:`LoadVolumed` (:func:`load_volume_tensor`): NIfTI, NRRD, MetaImage, a DICOM folder or a TransUNet ``.h5``
  -> a MetaTensor (C, X, Y, Z) with its RAS affine; :func:`volume_tensor` wraps an array read elsewhere the same way.
- :class:`LoadImage2Dd`, :class:`LoadMask2Dd`, :class:`DecodeRunLengthd`: the 2-D datasets' pictures (C, H, W),
  0/255 masks (1, H, W) and per-class run-length strings (classes, H, W), as float32 tensors.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..data.uwmgi import decode_rle
from ..io.images import read_binary_mask, read_image_2d
from ..io.volumes import VolumeReadError, load_volume


class LoadVolumed(MapTransform):
    """Load volume files (NIfTI, NRRD, MetaImage, a DICOM folder, TransUNet ``.h5``) as MetaTensors.

    Each key's value is a path, or a list of paths (channels, same grid). Output: (C, X, Y, Z) with
    the RAS affine attached; HDF5 files are read from the dataset named like the key.
    """

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_volume_tensor(d[key], h5_key=str(key))
        return d


def load_volume_tensor(paths: str | os.PathLike | Sequence, h5_key: str = "image") -> MetaTensor:
    """One or more single-channel (or one multi-channel) volume files as a (C, X, Y, Z) MetaTensor."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    arrays, affine = [], None
    for path in paths:
        volume = load_volume(path, h5_key=h5_key)
        if volume.array.ndim not in (3, 4):
            raise VolumeReadError(f"{path}: expected a 3-D or 4-D volume, found shape {volume.array.shape}")
        if arrays and (
            volume.array.shape[:3] != arrays[0].shape[:3] or not np.allclose(volume.affine, affine, atol=1e-4)
        ):
            raise VolumeReadError(
                f"{path}: its grid differs from {paths[0]} (shape {volume.array.shape[:3]} vs {arrays[0].shape[:3]})"
            )
        arrays.append(_torch_integer(volume.array))
        affine = volume.affine if affine is None else affine
    if len(arrays) > 1:  # channels of one grid, stacked as the last axis volume_tensor expects
        arrays = [np.concatenate([a if a.ndim == 4 else a[..., None] for a in arrays], axis=-1)]
    return volume_tensor(arrays[0], affine, paths[0])


def volume_tensor(
    array: np.ndarray, affine: np.ndarray, source: str | os.PathLike, dtype: np.dtype | type | None = None
) -> MetaTensor:
    """A volume ``array`` ``[X, Y, Z]`` or ``[X, Y, Z, C]`` as a channel-first ``[C, X, Y, Z]`` MetaTensor.

    It carries the 4x4 index-to-RAS ``affine`` (float64) and ``source`` as its file name, as MONAI's loaders do;
    ``dtype`` converts the values (default: kept).
    """
    channels_first = array[None] if array.ndim == 3 else np.moveaxis(array, -1, 0)
    return MetaTensor(
        torch.as_tensor(np.ascontiguousarray(channels_first, dtype=dtype)),
        affine=torch.as_tensor(affine, dtype=torch.float64),
        meta={"filename_or_obj": str(source)},
    )


def _torch_integer(array: np.ndarray) -> np.ndarray:
    """Unsigned integers wider than 8 bits as the signed type that holds them (torch computes with neither)."""
    if array.dtype in (np.uint16, np.uint32, np.uint64):
        return array.astype(np.int64 if array.dtype != np.uint16 else np.int32)
    return array


class LoadImage2Dd(MapTransform):
    """Load pictures (or the array named like the key inside an ``.npz``) as (C, H, W) float32 tensors."""

    def __init__(self, keys: KeysCollection, channels: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.as_tensor(read_image_2d(d[key], self.channels, array_name=str(key)).astype(np.float32))
        return d


class LoadMask2Dd(MapTransform):
    """Load 0/255 mask pictures (a path or a list, united) as (1, H, W) float32 tensors in {0, 1}."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.as_tensor(read_binary_mask(d[key]).astype(np.float32))
        return d


class DecodeRunLengthd(MapTransform):
    """Decode per-class run-length strings (``rle_key``) into a (classes, H, W) float32 ``label``.

    The image height and width come from the entry's ``height`` and ``width`` keys.
    """

    def __init__(self, rle_key: str = "label_rle", label_key: str = "label", allow_missing_keys: bool = False) -> None:
        super().__init__(rle_key, allow_missing_keys)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            masks = [decode_rle(rle, d["height"], d["width"]) for rle in d[key]]
            d[self.label_key] = torch.as_tensor(np.stack(masks).astype(np.float32))
        return d
