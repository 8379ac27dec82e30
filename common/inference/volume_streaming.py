"""Segment a volume slab by slab: read, orient, scale, infer and write a few slices at a time.

A bundle's volume preprocessing (``Orientationd``, ``ScaleIntensityRanged`` or ``ScaleIntensityd``,
``EnsureTyped``) followed by the slice-wise inferer and ``Invertd`` is, voxel for voxel, a function of each slice
alone once the volume's intensity range is known (``ScaleIntensityd``: one pass over the volume first). So the
volume is never converted, reoriented or scaled as a whole: :func:`segment_streamed` reads slabs of slices in the
bundle's orientation (:class:`common.io.lazy_volumes.OrientedSlabs`), scales them with the bundle's own transforms,
runs them through :func:`common.inference.engine.stream_slices` and writes the labels into a uint8 array in the input's
voxel grid through a reoriented view (so no inversion is needed). Memory: the input where it is held whole (a
``.nii.gz`` read across its slice axis; other files are read from disk slab by slab), one uint8 label volume, and
the batches in flight.
:func:`streaming_plan` says whether a bundle's pipeline can run this way; any other pipeline runs whole-volume, as
before. :func:`segment_volume` chooses between the two for ``segment``, the bundles' ``inference.json`` and MONAI
Label alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    Orientationd,
    ScaleIntensityd,
    ScaleIntensityRanged,
)

from common.inference.engine import stream_slices
from common.inference.host_allocator import release_freed_host_memory
from common.inference.inferer import SliceInferer2D
from common.io.lazy_volumes import (
    LazyVolume,
    OrientedSlabs,
    as_lazy_volume,
    orientation_transform,
    oriented_view,
)
from common.io.volumes import Volume
from common.transforms.loading import LoadImage2Dd, LoadVolumed, volume_tensor

IMAGE_KEY = "image"
STATS_SLABS = 32  # slices per read when scanning the volume for its intensity range

IntensityStep = Callable[[torch.Tensor], torch.Tensor]
SlabReader = Callable[[int, int], torch.Tensor]

#: a bundle preprocessing's leading transforms that read the file; everything after them works on arrays
READER_TRANSFORMS = (LoadImaged, EnsureChannelFirstd, LoadImage2Dd, LoadVolumed)


def split_readers(preprocessing: Compose | Sequence[Callable]) -> tuple[Compose, Compose]:
    """(the leading :data:`READER_TRANSFORMS`, everything after them) of a bundle's preprocessing."""
    transforms = list(preprocessing.transforms if isinstance(preprocessing, Compose) else preprocessing)
    first = next((i for i, t in enumerate(transforms) if not isinstance(t, READER_TRANSFORMS)), len(transforms))
    return Compose(transforms[:first]), Compose(transforms[first:])


def without_inversion(postprocessing: Compose | Sequence[Callable]) -> list[Callable]:
    """A bundle's postprocessing for labels :func:`segment_volume` already put on the input's grid: its
    ``Invertd`` steps left out (nothing is left to invert), the rest in order."""
    steps = postprocessing.transforms if isinstance(postprocessing, Compose) else postprocessing
    return [step for step in steps if not isinstance(step, Invertd)]


@dataclass(frozen=True)
class StreamingPlan:
    """A bundle pipeline in streamable form: ``axcodes`` (``None``: slices as stored) with the orientation
    ``labels`` MONAI uses, and the intensity transforms in order; ``global_range`` is the ``ScaleIntensityd``
    (first among them) that needs the whole volume's minimum and maximum, else ``None``."""

    axcodes: str | None
    labels: Sequence[Sequence[str]] | None
    global_range: ScaleIntensityd | None
    steps: tuple[IntensityStep, ...]


def streaming_plan(preprocessing: Compose, inferer: object) -> StreamingPlan | None:
    """``preprocessing``/``inferer`` as a :class:`StreamingPlan` for :func:`segment_streamed`, or ``None`` when any
    part is not one this module reproduces exactly (another transform, more keys, a float output of the inferer...)."""
    if not isinstance(inferer, SliceInferer2D):
        return None
    options = inferer.options
    if options.output != "labels" or options.activation != "softmax":
        return None
    return preprocessing_plan(preprocessing)


def preprocessing_plan(preprocessing: Compose) -> StreamingPlan | None:
    """A bundle's preprocessing (after its readers) as a :class:`StreamingPlan`, or ``None`` when a transform is
    not one :func:`preprocessed_slabs` reproduces exactly."""
    axcodes, labels, global_range, steps = None, None, None, []
    for transform in preprocessing.transforms:
        if tuple(getattr(transform, "keys", ())) != (IMAGE_KEY,):
            return None
        if isinstance(transform, Orientationd):
            orientation = transform.ornt_transform
            if axcodes is not None or orientation.as_closest_canonical or not orientation.axcodes:
                return None
            axcodes, labels = str(orientation.axcodes), orientation.labels
        elif isinstance(transform, ScaleIntensityRanged):
            steps.append(transform.scaler)
        elif isinstance(transform, ScaleIntensityd):
            scaler = transform.scaler
            if (
                steps
                or global_range is not None
                or scaler.factor is not None
                or scaler.channel_wise
                or scaler.minv is None
                or scaler.maxv is None
                or scaler.dtype not in (np.float32, torch.float32)
            ):
                return None
            global_range = transform
        elif isinstance(transform, EnsureTyped):
            if transform.converter.dtype not in (None, torch.float32, np.float32, "float32"):
                return None
        else:
            return None
    return StreamingPlan(axcodes, labels, global_range, tuple(steps))


def _as_batch(slab: np.ndarray) -> torch.Tensor:
    """A slab ``[X, Y, b]`` or ``[X, Y, b, C]`` as a float32 batch of slices ``[b, C, X, Y]``."""
    slab = slab[..., None] if slab.ndim == 3 else slab
    batch = np.empty((slab.shape[2], slab.shape[3], slab.shape[0], slab.shape[1]), dtype=np.float32)
    batch[...] = slab.transpose(2, 3, 0, 1)  # always a copy: the slab may be a read-only view of the source
    return torch.from_numpy(batch)


def _rescale_step(scaler_owner: ScaleIntensityd, slabs: OrientedSlabs) -> IntensityStep:
    """``ScaleIntensityd``'s ``rescale_array`` with the minimum and maximum of the whole volume (float32, as
    ``rescale_array`` converts before taking them), applied to one batch at a time."""
    low, high = np.float32(np.inf), np.float32(-np.inf)
    for start in range(0, slabs.num_slices, STATS_SLABS):
        values = _as_batch(slabs.slab(start, min(start + STATS_SLABS, slabs.num_slices)))
        low, high = min(low, values.min().numpy()), max(high, values.max().numpy())
    mina, maxa = torch.tensor(low), torch.tensor(high)
    minv, maxv = scaler_owner.scaler.minv, scaler_owner.scaler.maxv

    def rescale(batch: torch.Tensor) -> torch.Tensor:
        if mina == maxa:
            return batch * minv
        return ((batch - mina) / (maxa - mina)) * (maxv - minv) + minv

    return rescale


def preprocessed_slabs(volume: LazyVolume, plan: StreamingPlan) -> tuple[OrientedSlabs, SlabReader]:
    """``volume``'s slabs in the plan's orientation, and ``read(start, stop)``: slices ``start..stop-1`` as the
    bundle's preprocessing gives them, float32 ``[stop - start, C, H, W]`` (``ScaleIntensityd``'s volume-wide
    minimum and maximum are found first, in one pass over the slabs)."""
    transform = (
        orientation_transform(volume.affine, plan.axcodes, plan.labels)
        if plan.axcodes is not None
        else np.array([[0, 1], [1, 1], [2, 1]])
    )
    slabs = OrientedSlabs(volume, transform)
    steps = list(plan.steps)
    if plan.global_range is not None:
        steps.insert(0, _rescale_step(plan.global_range, slabs))

    def read(start: int, stop: int) -> torch.Tensor:
        batch = _as_batch(slabs.slab(start, stop))
        for step in steps:
            batch = step(batch)
        return batch.as_tensor() if isinstance(batch, MetaTensor) else batch

    return slabs, read


def segment_streamed(
    network: torch.nn.Module,
    inferer: SliceInferer2D,
    volume: LazyVolume,
    plan: StreamingPlan,
) -> np.ndarray:
    """uint8 labels ``[X, Y, Z]`` of ``volume`` in its own voxel grid, equal to what the bundle's preprocessing,
    ``inferer`` and ``Invertd`` give for the whole volume; see the module docstring."""
    slabs, read = preprocessed_slabs(volume, plan)
    labels = np.zeros(volume.shape[:3], dtype=np.uint8)
    oriented_labels = oriented_view(labels, slabs.transform)

    def write(start: int, result: torch.Tensor) -> None:
        oriented_labels[:, :, start : start + result.shape[0]] = result[:, 0].permute(1, 2, 0).numpy()

    stream_slices(network, read, slabs.num_slices, write, inferer.options, inferer.device, "cpu", inferer.progress)
    release_freed_host_memory()  # the activations malloc kept for reuse: the volume's outputs come next
    return labels


def segment_volume(
    network: torch.nn.Module,
    preprocessing: Compose,
    inferer: SliceInferer2D,
    volume: Volume | LazyVolume,
    *,
    streaming: bool = True,
) -> np.ndarray:
    """uint8 labels ``[X, Y, Z]`` of ``volume`` (``[X, Y, Z]`` or ``[X, Y, Z, C]``) on its own voxel grid.

    ``preprocessing`` is a bundle's preprocessing after its readers (:func:`split_readers`). With ``streaming``
    and a pipeline :func:`streaming_plan` reproduces, the volume is read, scaled, segmented and written a few
    slices at a time (:func:`segment_streamed`); otherwise it is converted whole, run through ``preprocessing``
    and ``inferer``, and brought back to its own grid by ``Invertd``. Both give the same labels.
    """
    plan = streaming_plan(preprocessing, inferer) if streaming else None
    if plan is not None:
        return segment_streamed(network, inferer, as_lazy_volume(volume), plan)
    volume = volume.load() if isinstance(volume, LazyVolume) else volume
    data = preprocessed_whole(preprocessing, volume)
    data["pred"] = inferer(data[IMAGE_KEY].unsqueeze(0), network)[0]
    restored = Invertd("pred", preprocessing, orig_keys=IMAGE_KEY, nearest_interp=True)(data)["pred"]
    labels = restored.detach().cpu().numpy()
    if labels.shape != (1, *volume.array.shape[:3]):
        raise ValueError(
            f"{volume.path}: the bundle's inferer returned shape {labels.shape}; expected "
            f"{(1, *volume.array.shape[:3])} (its inferer must output a label map)"
        )
    return labels[0].astype(np.uint8)


def preprocessed_whole(preprocessing: Compose, volume: Volume | LazyVolume) -> dict:
    """``{"image": MetaTensor [C, ...]}``: ``volume`` read whole and run through a bundle's ``preprocessing``
    (readers excluded): the path of pipelines :func:`preprocessing_plan` cannot stream."""
    volume = volume.load() if isinstance(volume, LazyVolume) else volume
    return preprocessing({IMAGE_KEY: volume_tensor(volume.array, volume.affine, volume.path, dtype=np.float32)})


def labels_on_input_grid(labels: np.ndarray, volume: Volume | LazyVolume) -> MetaTensor:
    """:func:`segment_volume`'s labels ``[X, Y, Z]`` as the ``[1, X, Y, Z]`` MetaTensor a bundle's postprocessing
    receives: the input's affine and file name in its metadata."""
    return MetaTensor(
        torch.from_numpy(labels[None]),
        affine=torch.as_tensor(volume.affine, dtype=torch.float64),
        meta={"filename_or_obj": str(volume.path)},
    )
