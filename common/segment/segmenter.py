"""A bundle, ready to segment: its network, preprocessing and inferer as its ``configs/inference.json`` defines them.

:func:`load_bundle` reads a bundle folder (``configs/inference.json``, ``configs/metadata.json``, the weights) into
a :class:`BundleSegmenter`, which segments one volume (``[X, Y, Z]`` -> labels on its own voxel grid) or one 2-D
picture at a time. Finding the cases and writing their outputs is :mod:`common.segment.cases`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from monai.bundle import ConfigParser
from monai.transforms import Compose

from common.inference.inferer import SliceInferer2D
from common.inference.precision import Precision
from common.inference.volume_streaming import StreamingPlan, segment_volume, split_readers, streaming_plan
from common.io.images import read_image_2d
from common.io.lazy_volumes import (
    LazyVolume,
)
from common.io.mask_saving import SaveMask2Dd
from common.io.validation import InputError
from common.io.volumes import Volume
from common.networks.convert import fit_state_dict
from common.networks.encoders import read_state_dict
from common.segment.bundle_metadata import BundleError, read_bundle_metadata


@dataclass(frozen=True)
class SegmentOptions:
    """How a bundle is loaded to segment, as the commands' options give it (``None``: the bundle's own choice).

    ``weights`` replaces ``models/model.pt`` (a state dict, read with ``weights_only=True``); ``network`` replaces
    the bundle's network altogether (weights are then not read); ``device`` is where the network runs (default:
    :func:`default_device`). ``batch_size`` (slices in flight at once) and ``precision`` (see
    :class:`common.inference.options.SliceInferenceOptions`) override the config's inferer.
    """

    weights: str | os.PathLike | None = None
    device: str | torch.device | None = None
    batch_size: int | None = None
    precision: Precision | None = None
    network: nn.Module | None = None


@dataclass
class BundleSegmenter:
    """A bundle's network, preprocessing and inferer, as its ``configs/inference.json`` defines them.

    ``readers`` are the config's leading loading transforms (used as they are for 2-D pictures; volumes are read
    with :func:`common.io.volumes.load_volume`, which also reads NRRD, MetaImage and DICOM); ``preprocessing``
    is everything after them (orientation, intensity scaling, typing), inverted on the prediction afterwards.
    ``label_names`` maps label values 1.. to names; multi-label bundles (sigmoid, overlapping binary channels)
    have ``channel_names`` instead, one per output channel.
    """

    root: Path
    network: nn.Module
    readers: Compose
    preprocessing: Compose
    inferer: SliceInferer2D
    label_names: dict[int, str]
    channel_names: list[str] | None
    num_classes: int
    num_channels: int
    spatial_dims: int

    @property
    def output_channels(self) -> int:
        """Channels of the inferer's output: 1 (a label map), or one binary channel per class (multi-label)."""
        return len(self.channel_names) if self.channel_names else 1

    @cached_property
    def streaming(self) -> StreamingPlan | None:
        """The bundle's preprocessing and inferer as a slab-by-slab plan, or ``None`` if they must run whole."""
        return streaming_plan(self.preprocessing, self.inferer)

    def segment_volume(self, volume: Volume | LazyVolume, *, streaming: bool = True) -> np.ndarray:
        """Labels ``[X, Y, Z]`` (uint8) of ``volume`` (``[X, Y, Z]`` or ``[X, Y, Z, C]``) on its own voxel grid.

        With ``streaming`` (and a bundle pipeline that allows it, :attr:`streaming`) the volume is read, scaled,
        segmented and written a few slices at a time (:func:`common.inference.volume_streaming.segment_volume`): same
        labels, and memory bounded by the input plus a uint8 label volume. Otherwise it is processed whole.
        """
        if self.channel_names:
            raise InputError(f"{volume.path}: the multi-label bundle {self.root.name} segments 2-D pictures only")
        shape = volume.shape if isinstance(volume, LazyVolume) else volume.array.shape
        self._check_channels(1 if len(shape) == 3 else shape[3], volume.path, shape)
        try:
            return segment_volume(self.network, self.preprocessing, self.inferer, volume, streaming=streaming)
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    def segment_picture(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(the picture as read ``[C, H, W]``, uint8 labels ``[K', H, W]``) for a 2-D picture file.

        ``K'`` is :attr:`output_channels`: a label map ``[1, H, W]`` or binary channels ``[K, H, W]``.
        """
        data = self.readers({"image": str(path)})
        self._check_channels(data["image"].shape[0], path, tuple(data["image"].shape))
        data = self.preprocessing(data)
        labels = self.inferer(data["image"].unsqueeze(0), self.network)[0]
        return read_image_2d(path), self._checked_labels(labels, tuple(data["image"].shape[1:]), path)

    def mask_writer(self, output_dir: Path) -> SaveMask2Dd:
        """The bundles' 2-D mask writer for this bundle's outputs, writing into ``output_dir``."""
        return SaveMask2Dd("pred", output_dir, self.num_classes, channel_names=self.channel_names)

    def _check_channels(self, found: int, path: Path, shape: tuple[int, ...]) -> None:
        if found != self.num_channels:
            raise InputError(
                f"{path}: the bundle {self.root.name} expects {self.num_channels}-channel images; "
                f"found {found} channel(s) (array shape {tuple(shape)})"
            )

    def _checked_labels(self, labels: torch.Tensor, shape: Sequence[int], path: Path) -> np.ndarray:
        """The inferer's ``[K', *shape]`` labels as numpy uint8, after checking their shape."""
        array = labels.detach().cpu().numpy()
        expected = (self.output_channels, *shape)
        if array.shape != expected:
            raise InputError(
                f"{path}: the bundle's inferer returned shape {array.shape}; expected {expected} "
                "(its inferer must output labels: a label map, or binary channels for a multi-label bundle)"
            )
        return array.astype(np.uint8)


def default_device() -> str:
    """``"cuda"`` when a GPU is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_bundle(
    bundle: str | os.PathLike, options: SegmentOptions | None = None, *, progress: bool = False
) -> BundleSegmenter:
    """Read ``bundle``'s ``configs/inference.json`` and ``configs/metadata.json`` and load its network.

    ``options`` (default: the bundle's own) chooses the weights or network, the device, the batch size and the
    precision (:class:`SegmentOptions`); ``progress`` shows a bar over slices.
    """
    options = options or SegmentOptions()
    root = Path(bundle)
    config_file, meta_file = root / "configs" / "inference.json", root / "configs" / "metadata.json"
    for path in (config_file, meta_file):
        if not path.is_file():
            raise BundleError(
                f"{path}: not found; expected a MONAI bundle folder with configs/inference.json "
                "and configs/metadata.json"
            )
    meta = read_bundle_metadata(meta_file)
    device = torch.device(options.device or default_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BundleError(f"device {device}: no CUDA device is available; use --device cpu")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(root)
    parser["inferer#progress"] = progress
    if options.batch_size is not None:
        parser["inferer#sw_batch_size"] = options.batch_size
    if options.precision is not None:
        parser["inferer#precision"] = options.precision
    try:
        pipeline = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer")
        if isinstance(inferer, SliceInferer2D):
            inferer.prepare_host_memory(device)  # before the network is built
        network = options.network
        if network is None:
            network = network_with_weights(
                parser, Path(options.weights) if options.weights else root / "models" / "model.pt"
            )
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(
            f"{config_file}: cannot build the bundle's inference pipeline ({type(exc).__name__}: {exc})"
        ) from exc
    readers, preprocessing = split_readers(pipeline)
    return BundleSegmenter(
        root=root,
        network=network.to(device).eval(),
        readers=readers,
        preprocessing=preprocessing,
        inferer=inferer,
        label_names=meta.label_names,
        channel_names=meta.channel_names,
        num_classes=meta.num_classes,
        num_channels=meta.num_channels,
        spatial_dims=meta.spatial_dims,
    )


def network_with_weights(parser: ConfigParser, weights: Path) -> nn.Module:
    """The config's ``network_def`` with the state dict in ``weights`` (ours, or an authors' checkpoint), read
    with ``weights_only=True``. The parser's own instance is used where it has built one already, so the weights
    are held once."""
    if not weights.is_file():
        raise BundleError(
            f"{weights}: model weights not found; train the bundle (configs/train.json) or pass --weights"
        )
    try:
        state = read_state_dict(weights)
    except ValueError as exc:
        raise BundleError(str(exc)) from exc
    network = parser.get_parsed_content("network_def")
    try:
        network.load_state_dict(fit_state_dict(network, state))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        raise BundleError(f"{weights}: these weights do not fit the bundle's network_def ({detail[0]} ...)") from exc
    return network
