"""Slice-wise inference: the inferer, its engine, options, precision and CPU lanes, volume streaming, host memory,
int8 and flip uncertainty.

The names bundle configs use as ``_target_`` are exported here, each module loaded when its name is first used.
"""

from ..environment.exports import lazy_exports

#: name -> the submodule that defines it
EXPORTS = {
    "SliceInferer2D": "inferer",
    "StreamedVolumeIteration": "bundle_streaming",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
