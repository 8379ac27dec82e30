"""The per-dataset training and evaluation pipelines, built from the loading, slicing, augmentation and resize
transforms as bundle-config components (bundle configs reference them as
``"_target_": "common.transforms.train_transforms"``):

- :func:`volume_transforms`: a datalist entry of volume files -> MetaTensors (C, H, W, Z), intensities windowed (CT: [-125, 275] HU -> [0, 1]) or normalised (MRI: per-volume
  min-max to [0, 1]; ``intensity="zscore"`` for zero mean, unit variance), labels mapped to training
  values, oriented to :data:`common.io.orientation.DISPLAY_AXCODES` so that
  :class:`~common.transforms.slicing.AxialSlicesd` draws 2-D slices, (C, H, W), already in the display layout of
  :func:`common.io.volumes.ras_axial_to_display`.
- :func:`train_transforms`: the published augmentation (:mod:`common.transforms.augmentation`), as seeded
  transforms moving image and label together. For datasets stored as volumes it works on slice dicts (see
  :func:`common.training.datasets.training_dataset`); for datasets stored as 2-D files it starts from the
  datalist entry.
- :func:`eval_transforms`: 2-D datasets: load, resize to the network input, normalise. 3-D datasets
  (evaluated per volume): :func:`volume_transforms`; the inference code slices and resizes.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import Compose

from ..data.base import DatasetReader
from ..data.input_size import INPUT_SIZE
from ..data.registry import get_dataset
from ..data.splits import DEFAULT_SEED
from ..io.orientation import DISPLAY_AXCODES
from .augmentation import build_transform, compose_config, photo_augmentation_configs, transunet_augmentation_config
from .slicing import KEYS

CT_WINDOW_HU = (-125.0, 275.0)
RAS_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # the affines here map to RAS, as nibabel's do


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
    return compose_config(transforms)


def train_transforms(
    dataset: str | DatasetReader, spatial_size: Sequence[int] = INPUT_SIZE, seed: int = DEFAULT_SEED
) -> Compose:
    """The published training augmentation for ``dataset``, seeded with ``seed``.

    Output: {"image": (C, *spatial_size) float32, "label": (L, *spatial_size) float32}. Datasets
    stored as volumes expect slice dicts from :class:`~common.transforms.slicing.AxialSlicesd` (already normalised
    per volume).
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
    return compose_config(steps)


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
    return compose_config(steps)


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
