"""Leave Triton unloaded in a process that has no GPU to run its kernels on.

``import monai`` imports torchvision (``monai.networks.blocks`` asks for ``torchvision.models``), torchvision's
``ops`` import ``torch._dynamo``, and ``torch._dynamo`` imports Triton whenever the package is installed, as it is
beside torch's CUDA builds. Triton compiles GPU kernels and nothing else; loading it on a machine without a GPU
costs about 85-105 MiB of resident memory (``libtriton`` and its Python modules; docs/benchmarks.md, "Volume
memory") and buys nothing. :func:`skip_triton_without_gpu` is called by the command line before it imports a
command, and by the MONAI Label launcher (:mod:`common.apps.label_server`); a bundle run through
``python -m monai.bundle`` imports MONAI before any of this package, so it loads Triton as before.
"""

from __future__ import annotations

import sys

import torch


def skip_triton_without_gpu() -> bool:
    """When torch sees no CUDA device and Triton is not loaded yet, make ``import triton`` fail for the rest of
    the process (a ``None`` entry in ``sys.modules``); returns whether it did. torch then treats Triton as not
    installed: eager code is unchanged, and ``torch.compile``'s CPU backend generates C++, not Triton."""
    if "triton" in sys.modules or torch.cuda.is_available():
        return False
    sys.modules["triton"] = None
    return True
