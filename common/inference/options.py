"""How slices are fed to the network and how its output is turned into the result: :class:`SliceInferenceOptions`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..data.input_size import INPUT_SIZE
from ..transforms.resize import Interpolation
from .precision import Precision

OutputKind = Literal["labels", "probabilities", "logits"]
Activation = Literal["softmax", "sigmoid"]
BlendMode = Literal["constant", "gaussian"]


@dataclass(frozen=True)
class SliceInferenceOptions:
    """How slices are fed to the network and how its output is turned into the result.

    Args:
        roi_size: network input (h, w); every slice is resized to it (or tiled by it with ``sliding_window``).
        batch_size: slices in flight at once, which bounds the activations' memory on every device: one forward
            pass of that many on a GPU; on a CPU shared out among the ``concurrent_batches``
            (:func:`~common.inference.lanes.slices_per_pass`: 4 is two passes of 2 on two threads, as fast as two
            passes of 4 and lighter). 4 suits a CPU; larger batches suit a GPU.
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
        precision: arithmetic of the network's forward pass (see :func:`~common.inference.precision.autocast_dtype`):
            ``"auto"`` (float16 autocast on CUDA, bfloat16 on CPUs with native bfloat16, else float32),
            ``"float32"`` (no autocast), or ``"float16"`` / ``"bfloat16"`` autocast, which fall back to float32
            with a warning where the device has no fast path for them. Resizing, softmax and argmax always run in
            float32.
        channels_last: run in channels-last memory format: batches are converted, and so is the network
            (an ``nn.Module`` is converted in place). Same labels; faster on CPUs and GPUs.
        concurrent_batches: on a CPU, forward passes at once, each on its own thread with an equal share of
            torch's intra-op threads (two one-thread passes keep two cores busier than one two-thread pass).
            ``None``: 2 when torch has exactly 2 threads (measured 1.3x faster), else 1 (multi-thread passes on
            worker threads were slower than on the calling thread); never more than ``batch_size``, always 1 on
            other devices. torch's thread count is lowered for the duration of the call, so do not run other
            torch work beside it.
        reuse_host_memory: on a CPU, let glibc's malloc keep freed activation memory for the next batch instead
            of handing it back to the kernel (:func:`common.inference.host_allocator.reuse_freed_host_memory`;
            process-wide, same results; less kernel time per batch, at some cost in peak memory:
            docs/benchmarks.md).
    """

    roi_size: tuple[int, int] = INPUT_SIZE
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
