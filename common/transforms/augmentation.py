"""The published training augmentation: seeded MONAI dictionary transforms moving image and label together.

Families (from the dataset reader's ``augmentation`` attribute; :mod:`common.transforms.pipelines` adds the resize):

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

Each family is written once, as bundle-config components (what ``configs/train.json`` shows), and instantiated
from them (:func:`build_transform`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, OneOf, RandomizableTransform
from scipy.ndimage import gaussian_filter, rotate

from .slicing import KEYS, plain_tensor


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
    rot90_flip = compose_config(
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


def compose_config(transforms: list[dict]) -> dict:
    """``transforms`` (bundle-config components) as one ``Compose`` component."""
    return {"_target_": "Compose", "transforms": transforms}
