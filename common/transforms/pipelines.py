"""MONAI dictionary transforms for the datasets, and the per-dataset training / evaluation pipelines.

Pipelines (bundle configs reference them as ``"_target_": "common.transforms.train_transforms"``):

- :func:`volume_transforms`: a datalist entry of volume files -> MetaTensors (C, H, W, Z) in display orientation
  orientation, intensities windowed (CT: [-125, 275] HU -> [0, 1]) or normalised (MRI: per-volume
  min-max to [0, 1]; ``intensity="zscore"`` for zero mean, unit variance), labels mapped to training
  values, oriented to :data:`common.io.orientation.DISPLAY_AXCODES` so that :class:`AxialSlicesd` draws 2-D
  slices, (C, H, W), already in the display layout of :func:`common.io.volumes.ras_axial_to_display`.
- :func:`train_transforms`: the published augmentation, as seeded transforms moving image and label
  together. For datasets stored as volumes it works on slice dicts (see
  :func:`common.training.datasets.training_dataset`); for datasets stored as 2-D files it starts from the
  datalist entry.
- :func:`eval_transforms`: 2-D datasets: load, resize to the network input, normalise. 3-D datasets
  (evaluated per volume): :func:`volume_transforms`; the inference code slices and resizes.

Families (from the dataset reader's ``augmentation`` attribute):

- ``"transunet"`` (Synapse, ACDC, UW-Madison, nnU-Net): with p 0.5 a random rot90 (k in 0-3) plus a
  flip along a random axis, else with p 0.5 a rotation by an integer angle in [-20, 20) degrees
  (``scipy.ndimage.rotate`` as TransUNet: nearest neighbour, zero fill); then resize as TransUNet
  (``scipy.ndimage.zoom``: image cubic spline, label order 0; :mod:`common.transforms.resize`).
- ``"photo"`` (BUSI, HAM10000, PH2): resize first as the authors' torchvision ``Resize`` (image bilinear
  with anti-aliasing, label ``NEAREST``; :mod:`common.transforms.resize`), then rotation up to
  30 degrees (p 0.5, reflected border), horizontal and vertical flips (p 0.5 each),
  brightness/contrast 0.2 (p 0.2, the authors' albumentations call), Gaussian blur with kernel 3, 5 or 7
  (p 0.3), elastic deformation (p 0.3); per-image min-max to [0, 1]; mask to {0, 1}. The probabilities the spec leaves open and the
  elastic strength (alpha 1, sigma 50 pixels) follow albumentations' defaults.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, OneOf, Randomizable, RandomizableTransform
from scipy.ndimage import gaussian_filter, rotate

from common.data.base import DatasetReader
from common.data.input_size import INPUT_SIZE
from common.data.registry import get_dataset
from common.data.splits import DEFAULT_SEED
from common.data.uwmgi import decode_rle
from common.io.images import read_binary_mask, read_image_2d
from common.io.orientation import DISPLAY_AXCODES
from common.io.volumes import VolumeReadError, load_volume

CT_WINDOW_HU = (-125.0, 275.0)
KEYS = ("image", "label")
RAS_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # the affines here map to RAS, as nibabel's do


# ----------------------------------------------------------------------------- loading


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


# ----------------------------------------------------------------------------- volumes to slices


class AxialSlicesd(Randomizable, MapTransform):
    """Cut a (C, H, W, Z) volume dict into 2-D slice dicts (C, H, W), the slices taken as stored.

    :func:`volume_transforms` orients volumes to :data:`~common.io.orientation.DISPLAY_AXCODES`, so the slices are
    in the display layout, the same the slice-wise inferer sees at evaluation and inference.

    ``mode="all"`` yields every axial slice in order; ``mode="foreground"`` draws ``num_samples``
    slices, each from the slices whose ``label_key`` holds foreground with probability
    ``foreground_prob`` (else from all slices). Other entries of the dict are copied into every slice
    dict, which also gets ``"slice"`` (the index along Z). Returns a list of dicts.
    """

    def __init__(
        self,
        keys: KeysCollection = KEYS,
        mode: str = "all",
        num_samples: int = 8,
        foreground_prob: float = 0.5,
        label_key: str = "label",
        allow_missing_keys: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if mode not in ("all", "foreground"):
            raise ValueError(f"mode must be 'all' or 'foreground', got {mode!r}")
        self.mode, self.num_samples, self.foreground_prob, self.label_key = (
            mode,
            num_samples,
            foreground_prob,
            label_key,
        )
        self.indices: list[int] = []

    def randomize(self, data: Mapping[Hashable, object]) -> None:
        """Choose the slice indices to yield for the volume dict ``data`` (kept in ``self.indices``)."""
        depth = int(data[self.first_key(data)].shape[-1])
        if self.mode == "all":
            self.indices = list(range(depth))
            return
        foreground: list[int] = []
        if self.label_key in data:
            label = torch.as_tensor(data[self.label_key])
            foreground = torch.nonzero(label.reshape(-1, depth).ne(0).any(0)).flatten().tolist()
        self.indices = []
        for _ in range(self.num_samples):
            from_foreground = foreground and self.R.random_sample() < self.foreground_prob
            self.indices.append(int(self.R.choice(foreground)) if from_foreground else int(self.R.randint(depth)))

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        self.randomize(data)
        keys = list(self.key_iterator(dict(data)))
        arrays = {key: plain_tensor(data[key]) for key in keys}
        others = {key: value for key, value in data.items() if key not in arrays}
        return [
            {
                **others,
                **{key: array[..., k].contiguous() for key, array in arrays.items()},
                "slice": k,
            }
            for k in self.indices
        ]


def plain_tensor(value: object) -> torch.Tensor:
    """``value`` (a MetaTensor, tensor or array) as a plain tensor, without MONAI's metadata."""
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


# ----------------------------------------------------------------------------- augmentation


class RandIntegerRotated(RandomizableTransform, MapTransform):
    """Rotate 2-D (C, H, W) items by one integer angle drawn from [-max_degrees, max_degrees) degrees.

    As TransUNet does: ``scipy.ndimage.rotate`` without reshaping, zero fill, spline ``order`` per key
    (0, nearest neighbour, by default for every key).
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_degrees: int = 20,
        prob: float = 1.0,
        order: int | Sequence[int] = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.max_degrees = max_degrees
        self.order = (order,) * len(self.keys) if isinstance(order, int) else tuple(order)
        self.angle = 0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self.angle = int(self.R.randint(-self.max_degrees, self.max_degrees))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key, order in self.key_iterator(d, self.order):
            item = plain_tensor(d[key])
            rotated = rotate(
                item.numpy(), self.angle, axes=(2, 1), reshape=False, order=order, mode="constant", cval=0.0
            )
            d[key] = torch.as_tensor(rotated, dtype=item.dtype)
        return d


class RandBrightnessContrastd(RandomizableTransform, MapTransform):
    """``x * (1 + c) + b * max_value``, clipped to [0, max_value].

    ``c`` is uniform in [-contrast, contrast], ``b`` in [-brightness, brightness] (as albumentations'
    RandomBrightnessContrast with brightness by maximum).
    """

    def __init__(
        self,
        keys: KeysCollection,
        brightness: float = 0.2,
        contrast: float = 0.2,
        prob: float = 0.5,
        max_value: float = 255.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.brightness, self.contrast, self.max_value = brightness, contrast, max_value
        self.alpha, self.beta = 1.0, 0.0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self.alpha = 1.0 + self.R.uniform(-self.contrast, self.contrast)
        self.beta = self.R.uniform(-self.brightness, self.brightness)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = (d[key] * self.alpha + self.beta * self.max_value).clamp(0.0, self.max_value)
        return d


def opencv_gaussian_sigma(kernel_size: int) -> float:
    """The sigma OpenCV (and albumentations) derive from an odd kernel size when none is given."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


class RandGaussianBlurd(RandomizableTransform, MapTransform):
    """Blur (C, H, W) images with a Gaussian kernel of a random odd size in ``kernel_sizes`` (reflected border)."""

    def __init__(
        self,
        keys: KeysCollection,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        prob: float = 0.3,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.kernel_sizes = tuple(kernel_sizes)
        self.kernel_size = self.kernel_sizes[0]

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self.kernel_size = int(self.R.choice(self.kernel_sizes))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = gaussian_blur_2d(torch.as_tensor(d[key]), self.kernel_size)
        return d


def gaussian_blur_2d(image: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur of a (C, H, W) tensor, OpenCV's sigma for the size, reflected border."""
    radius = kernel_size // 2
    sigma = opencv_gaussian_sigma(kernel_size)
    taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    taps = (taps / taps.sum()).to(image.dtype)
    channels = image.shape[0]
    x = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = F.conv2d(x, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return x[0]


class RandElasticd(RandomizableTransform, MapTransform):
    """Elastic deformation (Simard et al. 2003) of 2-D (C, H, W) items with one shared random field.

    Displacements: uniform noise in [-1, 1] smoothed by a Gaussian of ``sigma`` pixels, times ``alpha``.
    ``mode`` per key ("bilinear" for images, "nearest" for labels); reflected border.
    """

    def __init__(
        self,
        keys: KeysCollection,
        alpha: float = 1.0,
        sigma: float = 50.0,
        prob: float = 0.3,
        mode: str | Sequence[str] = ("bilinear", "nearest"),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.alpha, self.sigma = alpha, sigma
        self.mode = (mode,) * len(self.keys) if isinstance(mode, str) else tuple(mode)
        self.field: np.ndarray | None = None

    def randomize(self, data: tuple[int, int] | None = None) -> None:
        super().randomize(None)
        if self._do_transform and data is not None:
            noise = self.R.uniform(-1.0, 1.0, size=(2, *data))
            self.field = np.stack([gaussian_filter(n, self.sigma, mode="constant") * self.alpha for n in noise])

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        height, width = d[self.first_key(d)].shape[-2:]
        self.randomize((height, width))
        if not self._do_transform:
            return d
        rows, cols = torch.meshgrid(
            torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
        )
        field = torch.as_tensor(self.field, dtype=torch.float32)
        grid = torch.stack(
            [(cols + field[1]) * 2 / max(width - 1, 1) - 1, (rows + field[0]) * 2 / max(height - 1, 1) - 1], dim=-1
        )
        for key, mode in self.key_iterator(d, self.mode):
            item = plain_tensor(d[key])
            warped = F.grid_sample(
                item[None].float(), grid[None], mode=mode, padding_mode="reflection", align_corners=True
            )
            d[key] = warped[0].to(item.dtype)
        return d


def transunet_augmentation(keys: Sequence[str] = KEYS) -> OneOf:
    """TransUNet's RandomGenerator without the resize: p 0.5 rot90 + flip, else p 0.5 integer-angle rotation."""
    return build_transform(transunet_augmentation_config(keys))


def transunet_augmentation_config(keys: Sequence[str] = KEYS) -> dict:
    """:func:`transunet_augmentation` as a bundle-config component."""
    keys = list(keys)
    rot90_flip = _compose(
        [
            {"_target_": "RandRotate90d", "keys": keys, "prob": 0.75, "max_k": 3},
            {"_target_": "RandAxisFlipd", "keys": keys, "prob": 1.0},
        ]
    )
    integer_rotation = {"_target_": "common.transforms.RandIntegerRotated", "keys": keys, "max_degrees": 20, "order": 0}
    return {
        "_target_": "OneOf",
        "transforms": [rot90_flip, integer_rotation, {"_target_": "Identityd", "keys": keys}],
        "weights": [0.5, 0.25, 0.25],
    }


def photo_augmentation(keys: Sequence[str] = KEYS) -> list:
    """Rotation up to 30 degrees, both flips, brightness/contrast, Gaussian blur, elastic (images 0-255)."""
    return [build_transform(config) for config in photo_augmentation_configs(keys)]


def photo_augmentation_configs(keys: Sequence[str] = KEYS) -> list[dict]:
    """:func:`photo_augmentation` as bundle-config components."""
    keys = list(keys)
    image = keys[0]
    return [
        {
            "_target_": "RandRotated",
            "keys": keys,
            "range_x": float(np.deg2rad(30)),
            "prob": 0.5,
            "mode": ["bilinear", "nearest"],
            "padding_mode": "reflection",
        },
        {"_target_": "RandFlipd", "keys": keys, "prob": 0.5, "spatial_axis": 1},
        {"_target_": "RandFlipd", "keys": keys, "prob": 0.5, "spatial_axis": 0},
        {
            "_target_": "common.transforms.RandBrightnessContrastd",
            "keys": image,
            "brightness": 0.2,
            "contrast": 0.2,
            "prob": 0.2,
            "max_value": 255.0,
        },
        {"_target_": "common.transforms.RandGaussianBlurd", "keys": image, "kernel_sizes": [3, 5, 7], "prob": 0.3},
        {"_target_": "common.transforms.RandElasticd", "keys": keys, "prob": 0.3, "mode": ["bilinear", "nearest"]},
    ]


# ----------------------------------------------------------------------------- recipes as configs


def build_transform(config: dict | list) -> object:
    """Instantiate a transform (or a list of them) from bundle-config components, as ``monai.bundle`` does."""
    from monai.bundle import ConfigParser

    return ConfigParser({"transform": config}).get_parsed_content("transform", instantiate=True)


def _compose(transforms: list[dict]) -> dict:
    return {"_target_": "Compose", "transforms": transforms}


# ----------------------------------------------------------------------------- pipelines


def volume_transforms(
    dataset: str | DatasetReader, intensity: str | None = None, axcodes: str = DISPLAY_AXCODES
) -> Compose:
    """Datalist entry of volume files -> {"image": (C, H, W, Z) float32, "label": (1, H, W, Z)} in ``axcodes``.

    The default orientation puts every axial slice in the display layout the networks train on.

    ``intensity``: "ct_window", "minmax" (per volume), "zscore" (per volume) or "none"; default: the
    dataset's. Labels are mapped to training values where the dataset stores others (raw BTCV).
    """
    return build_transform(volume_transforms_config(dataset, intensity, axcodes))


def volume_transforms_config(
    dataset: str | DatasetReader, intensity: str | None = None, axcodes: str = DISPLAY_AXCODES
) -> dict:
    """:func:`volume_transforms` as a bundle-config ``Compose`` component (what ``configs/*.json`` show)."""
    reader = get_dataset(dataset)
    keys = list(KEYS)
    transforms = [
        {"_target_": "common.transforms.LoadVolumed", "keys": keys, "allow_missing_keys": True},
        {
            "_target_": "Orientationd",
            "keys": keys,
            "axcodes": axcodes,
            "labels": [list(a) for a in RAS_AXIS_LABELS],
            "allow_missing_keys": True,
        },
        intensity_config(intensity or reader.intensity),
    ]
    if reader.label_mapping:
        mapping = reader.label_mapping
        transforms.append(
            {
                "_target_": "MapLabelValued",
                "keys": "label",
                "orig_labels": list(mapping),
                "target_labels": list(mapping.values()),
                "allow_missing_keys": True,
            }
        )
    transforms.append({"_target_": "EnsureTyped", "keys": keys, "dtype": "$torch.float32", "allow_missing_keys": True})
    return _compose(transforms)


def train_transforms(
    dataset: str | DatasetReader, spatial_size: Sequence[int] = INPUT_SIZE, seed: int = DEFAULT_SEED
) -> Compose:
    """The published training augmentation for ``dataset``, seeded with ``seed``.

    Output: {"image": (C, *spatial_size) float32, "label": (L, *spatial_size) float32}. Datasets
    stored as volumes expect slice dicts from :class:`AxialSlicesd` (already normalised per volume).
    """
    return build_transform(train_transforms_config(dataset, spatial_size)).set_random_state(seed=seed)


def train_transforms_config(dataset: str | DatasetReader, spatial_size: Sequence[int] | str = INPUT_SIZE) -> dict:
    """:func:`train_transforms` (unseeded) as a bundle-config ``Compose`` component.

    ``spatial_size`` may be a config reference such as ``"@spatial_size"``.
    """
    reader = get_dataset(dataset)
    keys, size = list(KEYS), _size(spatial_size)
    steps = _load_2d_configs(reader) if reader.stored_as == "slices" else []
    if reader.augmentation == "photo":
        steps += [
            {"_target_": "common.transforms.ResizePictured", "keys": keys, "spatial_size": size},
            *photo_augmentation_configs(KEYS),
        ]
        steps += [
            {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
            {"_target_": "AsDiscreted", "keys": "label", "threshold": 0.5},
        ]
    else:
        if reader.stored_as == "slices":
            steps.append(intensity_config(reader.intensity))
        steps += [
            transunet_augmentation_config(KEYS),
            {"_target_": "common.transforms.ZoomSliced", "keys": keys, "spatial_size": size},
        ]
    steps.append({"_target_": "EnsureTyped", "keys": keys, "dtype": "$torch.float32", "track_meta": False})
    return _compose(steps)


def eval_transforms(dataset: str | DatasetReader, spatial_size: Sequence[int] = INPUT_SIZE) -> Compose:
    """Evaluation preprocessing: 2-D datasets to the network input size; 3-D datasets per volume.

    2-D output: {"image": (C, *spatial_size), "label": (L, *spatial_size)} (labels optional).
    3-D datasets (evaluated per volume) get :func:`volume_transforms`.
    """
    return build_transform(eval_transforms_config(dataset, spatial_size))


def eval_transforms_config(dataset: str | DatasetReader, spatial_size: Sequence[int] | str = INPUT_SIZE) -> dict:
    """:func:`eval_transforms` as a bundle-config ``Compose`` component."""
    reader = get_dataset(dataset)
    if reader.spatial_dims == 3:
        return volume_transforms_config(reader)
    keys = list(KEYS)
    steps = _load_2d_configs(reader, allow_missing_labels=True)
    if reader.augmentation != "photo":
        steps.append(intensity_config(reader.intensity))
    if reader.augmentation == "photo":
        steps.append(
            {
                "_target_": "common.transforms.ResizePictured",
                "keys": keys,
                "spatial_size": _size(spatial_size),
                "allow_missing_keys": True,
            }
        )
    else:
        steps.append(
            {
                "_target_": "Resized",
                "keys": keys,
                "spatial_size": _size(spatial_size),
                "mode": ["bicubic", "nearest-exact"],
                "allow_missing_keys": True,
            }
        )
    if reader.augmentation == "photo":
        steps += [
            {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
            {"_target_": "AsDiscreted", "keys": "label", "threshold": 0.5, "allow_missing_keys": True},
        ]
    steps.append(
        {
            "_target_": "EnsureTyped",
            "keys": keys,
            "dtype": "$torch.float32",
            "track_meta": False,
            "allow_missing_keys": True,
        }
    )
    return _compose(steps)


def _size(spatial_size: Sequence[int] | str) -> list[int] | str:
    return spatial_size if isinstance(spatial_size, str) else [int(s) for s in spatial_size]


def _load_2d_configs(reader: DatasetReader, allow_missing_labels: bool = False) -> list[dict]:
    """Transforms that read a 2-D datalist entry: image (C, H, W) in its stored range, label (L, H, W)."""
    steps = [{"_target_": "common.transforms.LoadImage2Dd", "keys": "image", "channels": reader.image_channels}]
    optional = {"allow_missing_keys": True} if allow_missing_labels else {}
    if reader.label_kind == "binary_mask":
        steps.append({"_target_": "common.transforms.LoadMask2Dd", "keys": "label", **optional})
    elif reader.label_kind == "run_length":
        steps.append(
            {"_target_": "common.transforms.DecodeRunLengthd", "rle_key": "label_rle", "label_key": "label", **optional}
        )
    else:
        steps.append({"_target_": "common.transforms.LoadImage2Dd", "keys": "label", "channels": 1, **optional})
    return steps


def intensity_config(intensity: str) -> dict:
    """Image intensity normalisation over the whole item (volume or picture), as a bundle-config component."""
    if intensity == "ct_window":
        low, high = CT_WINDOW_HU
        return {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": low,
            "a_max": high,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        }
    if intensity == "minmax":
        return {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0}
    if intensity == "zscore":
        return {"_target_": "NormalizeIntensityd", "keys": "image"}
    if intensity == "none":
        return {"_target_": "Identityd", "keys": "image"}
    raise ValueError(f"unknown intensity recipe {intensity!r}; expected ct_window, minmax, zscore or none")
