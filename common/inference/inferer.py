"""Slice-wise inference of 2-D segmentation networks over 3-D volumes and 2-D images.

One engine serves the ``segment`` command and every bundle's inference config, so both give identical masks.
Default protocol (the authors' evaluation): every slice is resized to the network input with a cubic spline
(``scipy.ndimage.zoom(order=3)``), the argmax is taken at network resolution and the uint8 label map is resized
back with nearest neighbour (``zoom(order=0)``). The network runs channels-last under autocast where the
hardware has a fast low-precision path (``precision="auto"``: float16 on CUDA, bfloat16 on CPUs with native
bfloat16 instructions, float32 elsewhere); ``precision="float32"`` runs the authors' arithmetic. Both resizes
run on the network's device: the spline resize is scipy's own linear operator, built once per size as one matrix
per axis and applied as two matrix products; the label resize is an index gather. Slices are streamed through
the network in small batches and written into the output as they come, so the resampled volume never exists
whole; :func:`stream_slices` takes the slices from a reader and hands results to a writer, so the input need not
exist whole either (``segment`` reads volumes slab by slab that way: :mod:`common.inference.volume_streaming`).

Layouts (MONAI channel-first): a volume is ``[C, X, Y, Z]`` with slices along the last axis, the 2-D slice
``volume[:, :, :, z]`` being ``[C, X, Y]`` (rows X, columns Y); a 2-D image is ``[C, H, W]``. The network maps
``[B, C, h, w]`` to logits ``[B, K, h, w]`` (or a list/tuple whose last element is the final output). Slices
go to the network as stored: give the volume in the in-plane layout the network was trained on (for example
through :func:`common.io.volumes.ras_axial_to_display`) and map the result back the same way.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer, sliding_window_inference
from scipy.ndimage import zoom
from tqdm import tqdm

from .host_allocator import reuse_freed_host_memory

Interpolation = Literal["spline", "bicubic", "bilinear"]
OutputKind = Literal["labels", "probabilities", "logits"]
Activation = Literal["softmax", "sigmoid"]
Precision = Literal["auto", "float32", "float16", "bfloat16"]
BlendMode = Literal["constant", "gaussian"]
Network = Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]]
DeviceLike = str | torch.device | None


@dataclass(frozen=True)
class SliceInferenceOptions:
    """How slices are fed to the network and how its output is turned into the result.

    Args:
        roi_size: network input (h, w); every slice is resized to it (or tiled by it with ``sliding_window``).
        batch_size: slices in flight at once, which bounds the activations' memory on every device: one forward
            pass of that many on a GPU; on a CPU shared out among the ``concurrent_batches``
            (:func:`slices_per_pass`: 4 is two passes of 2 on two threads, as fast as two passes of 4 and
            lighter). 4 suits a CPU; larger batches suit a GPU.
        interpolation: image resize into the network: ``"spline"`` (cubic B-spline, equal to the authors'
            ``scipy.ndimage.zoom(order=3)`` to float precision), or torch's ``"bicubic"`` or ``"bilinear"``.
        align_corners: ``True`` aligns the corner pixel centres, as ``scipy.ndimage.zoom`` does (required by
            ``"spline"``); ``False`` is the half-pixel convention of ``torch`` and MONAI ``Resize``. The label,
            probability and logit resizes back to the slice follow the same convention.
        output: ``"labels"`` (uint8; ``[1, ...]`` label map with softmax, ``[K, ...]`` binary channels with
            sigmoid), ``"probabilities"`` (float32 ``[K, ...]``, softmax or sigmoid resized bilinearly) or
            ``"logits"`` (float32 ``[K, ...]``, resized bilinearly).
        activation: ``"softmax"`` (one label per pixel, argmax) or ``"sigmoid"`` (independent, possibly
            overlapping binary channels, e.g. UW-Madison GI tract).
        threshold: sigmoid probability above which a channel is on (``"sigmoid"`` labels only).
        sliding_window: tile each slice with ``roi_size`` windows at its own resolution instead of resizing it.
        overlap: window overlap fraction (``sliding_window`` only).
        blend_mode: how overlapping windows are averaged (``sliding_window`` only).
        precision: arithmetic of the network's forward pass (see :func:`autocast_dtype`): ``"auto"`` (float16
            autocast on CUDA, bfloat16 on CPUs with native bfloat16, else float32), ``"float32"`` (no autocast),
            or ``"float16"`` / ``"bfloat16"`` autocast, which fall back to float32 with a warning where the
            device has no fast path for them. Resizing, softmax and argmax always run in float32.
        channels_last: run in channels-last memory format: batches are converted, and so is the network
            (an ``nn.Module`` is converted in place). Same labels; faster on CPUs and GPUs.
        concurrent_batches: on a CPU, forward passes at once, each on its own thread with an equal share of
            torch's intra-op threads (two one-thread passes keep two cores busier than one two-thread pass).
            ``None``: 2 when torch has exactly 2 threads (measured 1.3x faster), else 1 (multi-thread passes on
            worker threads were slower than on the calling thread); never more than ``batch_size``, always 1 on
            other devices. torch's thread count is lowered for the duration of the call, so do not run other
            torch work beside it.
        reuse_host_memory: on a CPU, let glibc's malloc keep freed activation memory for the next batch instead
            of handing it back to the kernel (:func:`common.inference.host_allocator.reuse_freed_host_memory`; process-wide,
            same results; less kernel time per batch, at some cost in peak memory: docs/benchmarks.md).
    """

    roi_size: tuple[int, int] = (224, 224)
    batch_size: int = 4
    interpolation: Interpolation = "spline"
    align_corners: bool = True
    output: OutputKind = "labels"
    activation: Activation = "softmax"
    threshold: float = 0.5
    sliding_window: bool = False
    overlap: float = 0.25
    blend_mode: BlendMode = "constant"
    precision: Precision = "auto"
    channels_last: bool = True
    concurrent_batches: int | None = None
    reuse_host_memory: bool = True

    def __post_init__(self) -> None:
        roi = tuple(int(s) for s in self.roi_size)
        if len(roi) != 2 or min(roi) < 1:
            raise ValueError(f"roi_size must be two positive integers (h, w), got {self.roi_size!r}")
        object.__setattr__(self, "roi_size", roi)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.concurrent_batches is not None and self.concurrent_batches < 1:
            raise ValueError(f"concurrent_batches must be at least 1 (or None), got {self.concurrent_batches}")
        _check_choice("interpolation", self.interpolation, get_args(Interpolation))
        if self.interpolation == "spline" and not self.align_corners:
            raise ValueError("interpolation='spline' resizes as scipy.ndimage.zoom does and needs align_corners=True")
        _check_choice("output", self.output, get_args(OutputKind))
        _check_choice("activation", self.activation, get_args(Activation))
        _check_choice("blend_mode", self.blend_mode, get_args(BlendMode))
        _check_choice("precision", self.precision, get_args(Precision))
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {self.threshold}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must lie in [0, 1), got {self.overlap}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def final_output(prediction: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The network's final map: the tensor itself, or the last element of a list/tuple (deep supervision)."""
    return prediction[-1] if isinstance(prediction, (list, tuple)) else prediction


class FinalOutput(nn.Module):
    """``network``'s final map only (:func:`final_output` of its output), for export and compilation."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return final_output(self.network(x))


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
    """Cubic B-spline resize equal to ``scipy.ndimage.zoom(order=3)``, on ``images``' device.

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


def _compute_device(network: Network, device: DeviceLike, fallback: torch.device) -> torch.device:
    """``device`` if given, else the device of the network's parameters, else ``fallback``."""
    if device is not None:
        return torch.device(device)
    if isinstance(network, nn.Module):
        parameter = next(network.parameters(), None)
        if parameter is not None:
            return parameter.device
    return fallback


def _prepare_network(network: Network, options: SliceInferenceOptions) -> None:
    """Refuse a module in training mode; convert it to channels-last if asked."""
    if not isinstance(network, nn.Module):
        return
    if network.training:
        raise ValueError("the network is in training mode; call network.eval() before inference")
    if options.channels_last:
        network.to(memory_format=torch.channels_last)


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), so bfloat16 autocast is fast.

    Without it PyTorch emulates bfloat16 on the CPU, about 30 times slower than float32.
    """
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or ``None`` for float32 (no autocast).

    ``"auto"`` picks float16 on CUDA, bfloat16 on CPUs with native bfloat16 and float32 elsewhere. An explicit
    ``"float16"`` or ``"bfloat16"`` that the device cannot run fast falls back to float32 with a warning.
    """
    fast = {"cuda": ("float16", "bfloat16"), "cpu": ("bfloat16",) if cpu_has_native_bfloat16() else ()}
    supported = fast.get(device.type, ())
    if precision == "auto":
        return getattr(torch, supported[0]) if supported else None
    if precision == "float32":
        return None
    if precision not in supported:
        warnings.warn(
            f"precision={precision!r} has no fast path on this {device.type} device; running float32", stacklevel=2
        )
        return None
    return getattr(torch, precision)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


class _SliceBatchPredictor:
    """Turns a batch of slices ``[b, C, H, W]`` into the requested output ``[b, K', H, W]`` on one device."""

    def __init__(self, network: Network, options: SliceInferenceOptions, device: torch.device):
        self.network, self.options, self.device = network, options, device
        self.dtype = autocast_dtype(options.precision, device)
        self.slices_per_pass = slices_per_pass(options, device)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw network output for network-sized inputs, float32 ``[b, K, h, w]``."""
        if self.options.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with _autocast(self.device, self.dtype):
            logits = final_output(self.network(batch))
        expected = (batch.shape[0], batch.shape[-2], batch.shape[-1])
        if logits.ndim != 4 or (logits.shape[0], logits.shape[-2], logits.shape[-1]) != expected:
            raise ValueError(
                f"the network returned shape {tuple(logits.shape)} for input {tuple(batch.shape)}; "
                f"expected logits [{expected[0]}, K, {expected[1]}, {expected[2]}]"
            )
        return logits.float()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        options = self.options
        size = (batch.shape[-2], batch.shape[-1])
        if options.sliding_window:
            logits = sliding_window_inference(
                batch,
                options.roi_size,
                self.slices_per_pass,
                self.logits,
                overlap=options.overlap,
                mode=options.blend_mode,
            )
        else:
            resized = resize_image(batch, options.roi_size, options.interpolation, options.align_corners)
            logits = self.logits(resized)
        return self._finish(logits, size)

    def _finish(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        options = self.options
        if options.output == "labels":
            if options.activation == "softmax":
                if logits.shape[1] > 256:
                    raise ValueError(f"{logits.shape[1]} classes do not fit a uint8 label map (at most 256)")
                labels = logits.argmax(dim=1, keepdim=True)
            else:
                labels = torch.sigmoid(logits) > options.threshold
            return resize_nearest(labels.to(torch.uint8), size, options.align_corners)
        if options.output == "probabilities":
            logits = torch.softmax(logits, dim=1) if options.activation == "softmax" else torch.sigmoid(logits)
        return resize_image(logits, size, "bilinear", options.align_corners)


def _as_tensor(volume: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(volume, MetaTensor):
        return volume.as_tensor()
    if isinstance(volume, torch.Tensor):
        return volume
    array = np.asarray(volume)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if any(stride < 0 for stride in array.strides):
        array = array.copy()
    return torch.from_numpy(array)


def concurrent_lanes(options: SliceInferenceOptions, device: torch.device) -> int:
    """How many forward passes run at once: ``options.concurrent_batches`` on a CPU (auto: 2 with 2 threads), at
    most ``options.batch_size``; 1 on other devices."""
    if device.type != "cpu":
        return 1
    if options.concurrent_batches is not None:
        lanes = options.concurrent_batches
    else:
        lanes = 2 if torch.get_num_threads() == 2 else 1
    return min(lanes, options.batch_size)


def slices_per_pass(options: SliceInferenceOptions, device: torch.device) -> int:
    """Slices in one forward pass: ``options.batch_size`` shared out among the :func:`concurrent_lanes`, so that
    no more than ``batch_size`` slices are in flight on any device (a remainder is left unused)."""
    return options.batch_size // concurrent_lanes(options, device)


def prepare_host_memory(options: SliceInferenceOptions, device: torch.device) -> bool:
    """On a CPU with ``options.reuse_host_memory``, tune malloc now (:func:`reuse_freed_host_memory`; once per
    process). Best called before the network is built: building it starts torch's threads, which share one malloc
    arena only if they first allocate after the call. Returns whether malloc was tuned."""
    return device.type == "cpu" and options.reuse_host_memory and reuse_freed_host_memory()


@contextlib.contextmanager
def _batch_map(lanes: int) -> Iterator[Callable]:
    """``map`` for slice batches: the built-in one for one lane (the calling thread, all of torch's threads);
    else a pool of ``lanes`` threads, torch's intra-op threads shared out among them while it is open."""
    if lanes == 1:
        yield map
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // lanes))  # threads started from now on take this count
    try:
        with ThreadPoolExecutor(lanes, thread_name_prefix="slice-batch") as pool:
            yield pool.map
    finally:
        torch.set_num_threads(threads)


SliceReader = Callable[[int, int], torch.Tensor]
SliceWriter = Callable[[int, torch.Tensor], None]


def _to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on ``device`` as float32: through pinned memory with a non-blocking copy on CUDA."""
    batch = batch.to(dtype=torch.float32)
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.contiguous().pin_memory().to(device, non_blocking=True)
    return batch.to(device).contiguous()


def stream_slices(
    network: Network,
    read: SliceReader,
    num_slices: int,
    write: SliceWriter,
    options: SliceInferenceOptions,
    device: DeviceLike = None,
    output_device: DeviceLike = "cpu",
    progress: bool = False,
) -> None:
    """Predict ``num_slices`` slices that ``read`` supplies batch by batch and hand each result to ``write``.

    ``read(start, stop)`` returns slices ``start..stop-1`` as ``[b, C, H, W]`` (any real dtype, usually on the
    host); ``write(start, result)`` receives their output ``[b, K', H, W]`` on ``output_device``. Nothing
    holds more than the batches in flight, so memory is bounded by the batch size whatever the volume's size:
    on a GPU every batch goes through pinned host memory with a non-blocking copy and its result comes back to
    the host. Batches of :func:`slices_per_pass` slices run :func:`concurrent_lanes` at a time; ``read`` and
    ``write`` are called under one lock, one call at a time, so they need not be thread-safe.
    """
    if num_slices < 1:
        raise ValueError(f"the input has no slices ({num_slices})")
    _prepare_network(network, options)
    device = _compute_device(network, device, torch.device("cpu"))
    output_device = torch.device(output_device) if output_device is not None else torch.device("cpu")
    predictor = _SliceBatchPredictor(network, options, device)
    prepare_host_memory(options, device)
    lock = threading.Lock()
    step = predictor.slices_per_pass

    def run(start: int) -> None:
        stop = min(start + step, num_slices)
        with lock:
            batch = read(start, stop)
        with torch.inference_mode():
            result = predictor(_to_device(batch, device)).to(output_device)
        with lock:
            write(start, result)

    starts = range(0, num_slices, step)
    bar = tqdm(total=len(starts), desc="slices", unit="batch", disable=not progress)
    with bar, _batch_map(concurrent_lanes(options, device)) as batch_map:
        for _ in batch_map(run, starts):
            bar.update()


def predict_slices(
    network: Network,
    stack: torch.Tensor,
    options: SliceInferenceOptions,
    device: DeviceLike = None,
    output_device: DeviceLike = None,
    progress: bool = False,
) -> torch.Tensor:
    """Predict every slice of ``stack`` ``[C, X, Y, Z]``; returns ``[K', X, Y, Z]`` on ``output_device``.

    ``K'`` is 1 for softmax labels and K otherwise. The network runs on ``device`` (default: where its
    parameters are, else where ``stack`` is); the output defaults to ``stack``'s device and is allocated when
    the first result arrives. The slices stream through :func:`stream_slices`.
    """
    if stack.ndim != 4:
        raise ValueError(f"expected a slice stack [C, X, Y, Z], got shape {tuple(stack.shape)}")
    if stack.shape[-1] == 0:
        raise ValueError(f"the input has no slices: shape {tuple(stack.shape)}")
    device = _compute_device(network, device, stack.device)
    output_device = torch.device(output_device) if output_device is not None else stack.device
    outputs: list[torch.Tensor] = []

    def read(start: int, stop: int) -> torch.Tensor:
        return stack[..., start:stop].permute(3, 0, 1, 2)

    def write(start: int, result: torch.Tensor) -> None:
        if not outputs:
            outputs.append(torch.empty((result.shape[1], *stack.shape[1:]), dtype=result.dtype, device=output_device))
        outputs[0][..., start : start + result.shape[0]] = result.permute(1, 2, 3, 0)

    stream_slices(network, read, stack.shape[-1], write, options, device, output_device, progress)
    return outputs[0]


def _restore_type(result: torch.Tensor, like: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    if isinstance(like, MetaTensor):
        return MetaTensor(result).copy_meta_from(like)
    if isinstance(like, torch.Tensor):
        return result
    return result.cpu().numpy()


def predict_volume(
    network: Network,
    volume: np.ndarray | torch.Tensor,
    options: SliceInferenceOptions | None = None,
    *,
    device: DeviceLike = None,
    output_device: DeviceLike = None,
    progress: bool = False,
    **overrides: Any,
) -> np.ndarray | torch.Tensor:
    """Segment a volume ``[C, X, Y, Z]`` slice by slice, or a 2-D image ``[C, H, W]``.

    Args:
        network: 2-D network in eval mode, ``[B, C, h, w] -> [B, K, h, w]``.
        volume: numpy array or tensor (a MONAI ``MetaTensor`` keeps its metadata in the result).
        options: a :class:`SliceInferenceOptions`; ``overrides`` (its field names) replace single fields.
        device: where the network runs (default: where its parameters are).
        output_device: where the result is assembled (default: the input's device; numpy results are on CPU).
        progress: show a progress bar over slice batches.

    Returns:
        Same type as ``volume``, spatial shape unchanged, channels first: uint8 ``[1, ...]`` label map
        (softmax labels), uint8 ``[K, ...]`` binary channels (sigmoid labels), or float32 ``[K, ...]``.
    """
    options = replace(options or SliceInferenceOptions(), **overrides)
    tensor = _as_tensor(volume)
    if tensor.ndim not in (3, 4):
        raise ValueError(f"expected an image [C, H, W] or a volume [C, X, Y, Z], got shape {tuple(tensor.shape)}")
    stack = tensor if tensor.ndim == 4 else tensor.unsqueeze(-1)
    result = predict_slices(network, stack, options, device, output_device, progress)
    return _restore_type(result if tensor.ndim == 4 else result[..., 0], volume)


class SliceInferer2D(Inferer):
    """MONAI ``Inferer`` running :func:`predict_volume` on each item of a batch.

    For a bundle: ``"inferer": {"_target_": "common.inference.SliceInferer2D", "roi_size": [224, 224]}``.
    ``inputs`` ``[B, C, X, Y, Z]`` (volumes, slices along the last axis) or ``[B, C, H, W]`` (2-D images, batched
    together). Returns ``[B, K', ...]`` of the same spatial shape (a ``MetaTensor`` keeps the input's metadata):
    with ``output="labels"`` (default) a uint8 label map ``[B, 1, ...]`` ready for ``SaveImaged`` (no
    ``AsDiscreted(argmax=True)`` needed); with ``"probabilities"``/``"logits"`` float32 ``[B, K, ...]`` for
    MONAI post-processing that expects per-class channels.

    Args:
        roi_size: network input (h, w).
        sw_batch_size: slices in flight at once (``SliceInferenceOptions.batch_size``).
        device: where the network runs (default: where its parameters are).
        output_device: where the result is assembled (default: the input's device).
        progress: show a progress bar over slice batches.
        options: any other :class:`SliceInferenceOptions` field.
    """

    def __init__(
        self,
        roi_size: Sequence[int] = (224, 224),
        sw_batch_size: int = 4,
        device: DeviceLike = None,
        output_device: DeviceLike = None,
        progress: bool = False,
        **options: Any,
    ):
        self.options = SliceInferenceOptions(roi_size=tuple(roi_size), batch_size=sw_batch_size, **options)
        self.device, self.output_device, self.progress = device, output_device, progress

    def prepare_host_memory(self, device: DeviceLike = None) -> bool:
        """:func:`prepare_host_memory` for ``device`` (else the inferer's, else the CPU): call it before the
        network is built. Returns whether malloc was tuned."""
        return prepare_host_memory(self.options, torch.device(device or self.device or "cpu"))

    def __call__(self, inputs: torch.Tensor, network: Network, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``[B, C, X, Y, Z]`` or ``[B, C, H, W]`` -> ``[B, K', ...]``; ``args``/``kwargs`` go to ``network``."""
        tensor = _as_tensor(inputs)
        if tensor.ndim not in (4, 5):
            raise ValueError(f"expected inputs [B, C, H, W] or [B, C, X, Y, Z], got shape {tuple(tensor.shape)}")
        _prepare_network(network, self.options)
        device = _compute_device(network, self.device, tensor.device)
        if args or kwargs:
            network = partial(network, *args, **kwargs)
        run = partial(
            predict_slices,
            network,
            options=self.options,
            device=device,
            output_device=self.output_device,
            progress=self.progress,
        )
        if tensor.ndim == 4:  # 2-D images: the batch is the slice axis
            result = run(tensor.permute(1, 2, 3, 0)).permute(3, 0, 1, 2).contiguous()
        else:
            result = torch.stack([run(item) for item in tensor])
        return _restore_type(result, inputs)
