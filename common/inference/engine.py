"""The slice-wise inference engine: slice batches through the network, streamed from a reader to a writer.

One engine serves the ``segment`` command and every bundle's inference config, so both give identical masks.
Default protocol (the authors' evaluation): every slice is resized to the network input with a cubic spline
(``scipy.ndimage.zoom(order=3)``), the argmax is taken at network resolution and the uint8 label map is resized
back with nearest neighbour (``zoom(order=0)``). The network runs channels-last under autocast where the
hardware has a fast low-precision path (``precision="auto"``: float16 on CUDA, bfloat16 on CPUs with native
bfloat16 instructions, float32 elsewhere; :mod:`common.inference.precision`); ``precision="float32"`` runs the
authors' arithmetic. Both resizes run on the network's device (:func:`common.transforms.resize.resize_spline`,
:func:`common.transforms.resize.resize_nearest`). Slices are streamed through the network in small batches
(:mod:`common.inference.lanes`) and written into the output as they come, so the resampled volume never exists
whole; :func:`stream_slices` takes the slices from a reader and hands results to a writer, so the input need not
exist whole either (``segment`` reads volumes slab by slab that way: :mod:`common.inference.volume_streaming`).

Layouts (MONAI channel-first): a volume is ``[C, X, Y, Z]`` with slices along the last axis, the 2-D slice
``volume[:, :, :, z]`` being ``[C, X, Y]`` (rows X, columns Y); a 2-D image is ``[C, H, W]``. The network maps
``[B, C, h, w]`` to logits ``[B, K, h, w]`` (or a list/tuple whose last element is the final output). Slices
go to the network as stored: give the volume in the in-plane layout the network was trained on (for example
through :func:`common.io.volumes.ras_axial_to_display`) and map the result back the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from tqdm import tqdm

from ..transforms.resize import resize_image, resize_nearest
from .lanes import batch_map, concurrent_lanes, prepare_host_memory, slices_per_pass
from .options import SliceInferenceOptions
from .precision import autocast, autocast_dtype

Network = Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]]
DeviceLike = str | torch.device | None


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


def compute_device(network: Network, device: DeviceLike, fallback: torch.device) -> torch.device:
    """``device`` if given, else the device of the network's parameters, else ``fallback``."""
    if device is not None:
        return torch.device(device)
    if isinstance(network, nn.Module):
        parameter = next(network.parameters(), None)
        if parameter is not None:
            return parameter.device
    return fallback


def prepare_network(network: Network, options: SliceInferenceOptions) -> None:
    """Refuse a module in training mode; convert it to channels-last if asked."""
    if not isinstance(network, nn.Module):
        return
    if network.training:
        raise ValueError("the network is in training mode; call network.eval() before inference")
    if options.channels_last:
        network.to(memory_format=torch.channels_last)


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
        with autocast(self.device, self.dtype):
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


def input_tensor(volume: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``volume`` as a plain tensor: a MetaTensor without its metadata, a tensor as is, an array shared (copied only
    where torch cannot view it: foreign byte order, negative strides)."""
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
    prepare_network(network, options)
    device = compute_device(network, device, torch.device("cpu"))
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
    with bar, batch_map(concurrent_lanes(options, device)) as map_batches:
        for _ in map_batches(run, starts):
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
    device = compute_device(network, device, stack.device)
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


def restore_type(result: torch.Tensor, like: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """``result`` as the type of the input ``like``: a MetaTensor with ``like``'s metadata, a tensor, or an array."""
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
    tensor = input_tensor(volume)
    if tensor.ndim not in (3, 4):
        raise ValueError(f"expected an image [C, H, W] or a volume [C, X, Y, Z], got shape {tuple(tensor.shape)}")
    stack = tensor if tensor.ndim == 4 else tensor.unsqueeze(-1)
    result = predict_slices(network, stack, options, device, output_device, progress)
    return restore_type(result if tensor.ndim == 4 else result[..., 0], volume)
