"""Slice-wise inference: the inferer, its engine, options, precision and CPU lanes, volume streaming, host memory,
int8 and flip uncertainty.

The names bundle configs use as ``_target_`` are exported here.
"""

from .bundle_streaming import StreamedVolumeIteration
from .inferer import SliceInferer2D

__all__ = ["SliceInferer2D", "StreamedVolumeIteration"]
