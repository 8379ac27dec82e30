"""Transforms: loading, slicing, augmentation, resizing and the pipelines built from them.

The names bundle configs use as ``_target_`` are exported here.
"""

from .augmentation import RandBrightnessContrastd, RandElasticd, RandGaussianBlurd, RandIntegerRotated
from .loading import DecodeRunLengthd, LoadImage2Dd, LoadMask2Dd, LoadVolumed
from .pipelines import eval_transforms, train_transforms
from .resize import ResizePictured, ZoomSliced

__all__ = [
    "DecodeRunLengthd",
    "LoadImage2Dd",
    "LoadMask2Dd",
    "LoadVolumed",
    "RandBrightnessContrastd",
    "RandElasticd",
    "RandGaussianBlurd",
    "RandIntegerRotated",
    "ResizePictured",
    "ZoomSliced",
    "eval_transforms",
    "train_transforms",
]
