"""Transforms: loading, slicing, augmentation, resizing and the pipelines built from them.

The names bundle configs use as ``_target_`` are exported here, each module loaded when its name is first used.
"""

from ..environment.exports import lazy_exports

#: name -> the submodule that defines it
EXPORTS = {
    "DecodeRunLengthd": "loading",
    "LoadImage2Dd": "loading",
    "LoadMask2Dd": "loading",
    "LoadVolumed": "loading",
    "RandBrightnessContrastd": "augmentation",
    "RandElasticd": "augmentation",
    "RandGaussianBlurd": "augmentation",
    "RandIntegerRotated": "augmentation",
    "ResizePictured": "resize",
    "ZoomSliced": "resize",
    "eval_transforms": "pipelines",
    "train_transforms": "pipelines",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
