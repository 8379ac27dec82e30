"""Resizing as the authors' training and evaluation code does it, as MONAI dictionary transforms.

- 2-D pictures (BUSI, HAM10000, PH2): torchvision's ``Resize``, the image bilinear with ``antialias=True`` on its
  8-bit values (rounded back to 8 bits, as torchvision does for ``uint8``), the mask by ``NEAREST``.
- Slices of volumes (Synapse, ACDC; TransUNet's ``RandomGenerator``): ``scipy.ndimage.zoom``, the image by the
  cubic spline (``order=3``), the label by ``order=0``: the same spline that evaluation uses.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy.ndimage import zoom
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from .slicing import plain_tensor


def resize_picture(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``image [C, H, W]`` -> ``[C, *size]`` float32: torchvision bilinear with anti-aliasing. Values that are
    8-bit integers (pictures as read) are resized as ``uint8``, as the authors' code resizes the loaded picture."""
    image = plain_tensor(image)
    eight_bit = bool(torch.all((image >= 0) & (image <= 255) & (image == image.round())))
    source = image.to(torch.uint8) if eight_bit else image.float()
    resized = tvf.resize(source, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    return resized.float()


def resize_mask(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``label [L, H, W]`` -> ``[L, *size]`` float32 by torchvision's ``NEAREST`` (PIL's legacy nearest)."""
    return tvf.resize(plain_tensor(label), list(size), interpolation=InterpolationMode.NEAREST).float()


def zoom_slice(array: torch.Tensor, size: Sequence[int], order: int) -> torch.Tensor:
    """``array [C, H, W]`` -> ``[C, *size]`` float32 by ``scipy.ndimage.zoom`` with ``order`` per channel."""
    values = plain_tensor(array).numpy()
    factors = [out / current for out, current in zip(size, values.shape[1:])]
    if factors == [1.0, 1.0]:
        return torch.as_tensor(values, dtype=torch.float32)
    return torch.as_tensor(np.stack([zoom(channel, factors, order=order) for channel in values]), dtype=torch.float32)


class _Resized(MapTransform):
    """Resize each key's ``[C, H, W]`` item to ``spatial_size`` by :meth:`resize` (which tells images from labels)."""

    def __init__(self, keys: KeysCollection, spatial_size: Sequence[int], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(spatial_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resize(key, d[key])
        return d

    def resize(self, key: Hashable, item: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ResizePictured(_Resized):
    """:func:`resize_picture` on ``image_key`` and :func:`resize_mask` on ``label_key`` (either may be missing)."""

    def resize(self, key: Hashable, item: torch.Tensor) -> torch.Tensor:
        return (resize_picture if key == "image" else resize_mask)(item, self.spatial_size)


class ZoomSliced(_Resized):
    """:func:`zoom_slice`: the image by the cubic spline, labels (any other key) by ``order=0``."""

    def resize(self, key: Hashable, item: torch.Tensor) -> torch.Tensor:
        return zoom_slice(item, self.spatial_size, order=3 if key == "image" else 0)
