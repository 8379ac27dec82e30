"""The arithmetic of the network's forward pass: whether this CPU has native bfloat16, and the autocast dtype."""

from __future__ import annotations

import warnings
from typing import Literal

import torch

Precision = Literal["auto", "float32", "float16", "bfloat16"]


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


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; disabled (float32) for ``None``."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
