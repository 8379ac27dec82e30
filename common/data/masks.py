"""Shared behaviour of the 2-D colour-picture datasets with 0/255 lesion masks (BUSI, HAM10000, PH2)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from common.data.base import Cases, DatasetReader, Entry, SampleError
from common.data.splits import Splits, fraction_split
from common.io.images import picture_size, read_mask_values


class BinaryMaskDataset(DatasetReader):
    """Pictures with one or more 0/255 mask files each (``entry["label"]``: a path or a list, united)."""

    label_kind = "binary_mask"
    augmentation = "photo"
    intensity = "minmax"
    image_channels = 3
    stored_as = "slices"
    spatial_dims = 2
    fractions: ClassVar[tuple[float, float, float]]

    def default_splits(self, cases: Cases) -> Splits:
        return fraction_split(list(cases), self.fractions, self.seed)

    def image_shape(self, entry: Entry) -> tuple[int, ...]:
        return picture_size(entry["image"])

    def read_label(self, entry: Entry) -> np.ndarray:
        """The stored mask values, (H, W); several mask files are united (their maximum)."""
        paths = entry["label"] if isinstance(entry["label"], list) else [entry["label"]]
        union = None
        for path in paths:
            mask = read_mask_values(path)
            if union is not None and mask.shape != union.shape:
                raise SampleError(f"{path}: mask shape {mask.shape} differs from {paths[0]} {union.shape}")
            union = mask if union is None else np.maximum(union, mask)
        return union
