"""Resizing: every resize of the project, the training transforms' and the inference engine's, in one place.

Per item, as the authors' training and evaluation code does it (MONAI dictionary transforms, on the CPU):

- 2-D pictures (BUSI, HAM10000, PH2): torchvision's ``Resize``, the image bilinear with ``antialias=True`` on its
  8-bit values (rounded back to 8 bits, as torchvision does for ``uint8``), the mask by ``NEAREST``
  (:func:`resize_picture`, :func:`resize_mask`, :class:`ResizePictured`).
- Slices of volumes (Synapse, ACDC; TransUNet's ``RandomGenerator``): ``scipy.ndimage.zoom``, the image by the
  cubic spline (``order=3``), the label by ``order=0``: the same spline that evaluation uses (:func:`zoom_slice`,
  :class:`ZoomSliced`).

Batched, on the network's device, for the slice-wise inference engine (:mod:`common.inference.engine`),
``[B, C, h, w] -> [B, C, *size]``:

- :func:`resize_spline`: ``scipy.ndimage.zoom(order=3)`` as scipy's own linear operator, built once per size as one
  matrix per axis (:func:`spline_zoom_matrix`) and applied as two matrix products in the batch's dtype.
- :func:`resize_nearest`: nearest neighbour as an index gather, with ``align_corners`` the choice of
  ``zoom(order=0)`` (:func:`nearest_indices`), without it the half-pixel convention.
- :func:`resize_image`: the spline or torch's bicubic/bilinear, as
  :class:`~common.inference.options.SliceInferenceOptions` asks.

The two families are kept apart on purpose: they compute the same maps to float precision where they meet, not bit
for bit. :func:`zoom_slice` runs scipy per channel (float64 inside, rounded once to float32), exactly as the authors
trained; :func:`resize_spline` applies the same operator as matrix products in the batch's dtype (float32) on a
GPU or CPU, which is what makes inference fast, and differs from scipy by float32 rounding. ``zoom(order=0)`` and
:func:`resize_nearest` with ``align_corners`` pick the same pixels except where scipy's round-off leaves the last
output position outside the input (scipy fills it with 0). :func:`resize_mask` is torchvision's legacy ``NEAREST``
(source index ``floor(i * in / out)``), which is neither of :func:`resize_nearest`'s conventions.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy.ndimage import zoom
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from .slicing import plain_tensor

Interpolation = Literal["spline", "bicubic", "bilinear"]


# ----------------------------------------------------------------------------- per item, as the authors


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


# ----------------------------------------------------------------------------- batched, for the inference engine


def nearest_indices(in_size: int, out_size: int, align_corners: bool, device: torch.device) -> torch.Tensor:
    """Source index of every output position for a nearest-neighbour resize along one axis, ``[out_size]``.

    With ``align_corners`` this is ``scipy.ndimage.zoom(order=0)``'s choice, except where scipy's round-off puts
    the last output position just outside the input and fills it with 0.
    """
    positions = torch.arange(out_size, device=device, dtype=torch.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        source = torch.floor(positions * scale + 0.5)
    else:
        source = torch.floor((positions + 0.5) * (in_size / out_size))
    return source.clamp_(0, in_size - 1).long()


def resize_nearest(labels: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Nearest-neighbour resize of integer maps by index gathering, ``[B, K, h, w] -> [B, K, *size]``."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    rows = nearest_indices(labels.shape[-2], size[0], align_corners, labels.device)
    cols = nearest_indices(labels.shape[-1], size[1], align_corners, labels.device)
    return labels.index_select(-2, rows).index_select(-1, cols)


@lru_cache(maxsize=32)
def spline_zoom_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``scipy.ndimage.zoom(order=3)`` along one axis as a matrix ``[out_size, in_size]`` (float64).

    The zoom is linear and separable, so ``R_rows @ image @ R_cols.T`` equals ``zoom(image, order=3)``.
    """
    impulses = np.eye(in_size)
    matrix = np.stack([zoom(impulse, out_size / in_size, order=3) for impulse in impulses], axis=1)
    matrix.setflags(write=False)  # shared through the cache
    return matrix


def resize_spline(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cubic B-spline resize equal to ``scipy.ndimage.zoom(order=3)`` to ``images``' precision, on their device.

    ``[B, C, h, w] -> [B, C, *size]``: one matrix product per axis.
    """
    rows, cols = (
        torch.tensor(spline_zoom_matrix(n_in, n_out), dtype=images.dtype, device=images.device)
        for n_in, n_out in zip(images.shape[-2:], size)
    )
    return torch.matmul(torch.matmul(rows, images), cols.T)


def resize_image(images: torch.Tensor, size: tuple[int, int], mode: Interpolation, align_corners: bool) -> torch.Tensor:
    """Resize float maps with ``mode`` (spline, bicubic or bilinear), ``[B, C, h, w] -> [B, C, *size]``."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if mode == "spline":
        return resize_spline(images, size)
    return F.interpolate(images, size=size, mode=mode, align_corners=align_corners)
