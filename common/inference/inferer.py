"""The MONAI ``Inferer`` of the project's bundles: :class:`SliceInferer2D`, the slice-wise engine
(:mod:`common.inference.engine`) on each item of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from monai.inferers import Inferer

from ..data.input_size import INPUT_SIZE
from .engine import DeviceLike, Network, compute_device, input_tensor, predict_slices, prepare_network, restore_type
from .lanes import prepare_host_memory
from .options import SliceInferenceOptions


class SliceInferer2D(Inferer):
    """MONAI ``Inferer`` running :func:`~common.inference.engine.predict_volume` on each item of a batch.

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
        options: any other :class:`~common.inference.options.SliceInferenceOptions` field.
    """

    def __init__(
        self,
        roi_size: Sequence[int] = INPUT_SIZE,
        sw_batch_size: int = 4,
        device: DeviceLike = None,
        output_device: DeviceLike = None,
        progress: bool = False,
        **options: Any,
    ):
        self.options = SliceInferenceOptions(roi_size=tuple(roi_size), batch_size=sw_batch_size, **options)
        self.device, self.output_device, self.progress = device, output_device, progress

    def prepare_host_memory(self, device: DeviceLike = None) -> bool:
        """:func:`~common.inference.lanes.prepare_host_memory` for ``device`` (else the inferer's, else the CPU):
        call it before the network is built. Returns whether malloc was tuned."""
        return prepare_host_memory(self.options, torch.device(device or self.device or "cpu"))

    def __call__(self, inputs: torch.Tensor, network: Network, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``[B, C, X, Y, Z]`` or ``[B, C, H, W]`` -> ``[B, K', ...]``; ``args``/``kwargs`` go to ``network``."""
        tensor = input_tensor(inputs)
        if tensor.ndim not in (4, 5):
            raise ValueError(f"expected inputs [B, C, H, W] or [B, C, X, Y, Z], got shape {tuple(tensor.shape)}")
        prepare_network(network, self.options)
        device = compute_device(network, self.device, tensor.device)
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
        return restore_type(result, inputs)
