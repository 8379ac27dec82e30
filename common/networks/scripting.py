"""TorchScript for networks that ``torch.jit.script`` cannot compile: their eval-mode trace, wrapped.

The model zoo exports a bundle with ``python -m monai.bundle ckpt_export network_def ...``, whose default is
``torch.jit.script(network)``. Our networks' Python (decoder stages picked by a runtime index, helpers that take
modules, nested functions) is outside what TorchScript compiles; each class names its first obstacle in
``torchscript_obstacle``. ``torch.jit.script`` calls ``__prepare_scriptable__`` before compiling, and
:class:`ScriptedByTracing` answers it with the network traced in eval mode on one example image
``[1, in_channels, S, S]`` (``S = script_example_size``), inside a one-line module that TorchScript compiles. The
saved file is therefore the same graph as ``ckpt_export ... --use_trace True`` writes: the inference network
(training mode, deep-supervision outputs and dropout are not in it), valid for other input sizes wherever the
network's shapes follow the input (all but :data:`FIXED_SIZE_NETWORKS`, whose position embeddings fix the size:
``script_example_size`` is their ``image_size``).

Example::

    >>> import torch
    >>> from common.networks import create_network
    >>> net = create_network("pvt_gdla", num_classes=2, encoder="pvt_v2_b0", encoder_weights="random").eval()
    >>> scripted = torch.jit.script(net)
    >>> x = torch.rand(1, 1, 64, 64)
    >>> bool((scripted(x) - net(x)).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
import torch.nn as nn

from ..data.input_size import INPUT_SIZE
from .registry import network_facts

#: the example image side the trace is taken at (every bundle's spatial size; a multiple of every network's stride)
SCRIPT_EXAMPLE_SIZE = INPUT_SIZE[0]
#: networks whose trace holds only inputs of their ``image_size`` (the position embedding's resizing is traced)
FIXED_SIZE_NETWORKS = ("setr", "transunet")
#: the tracer's warnings that Python on a shape is recorded as a constant (the input checks, fixed-size unpacking)
TRACE_CONSTANTS = (
    r"Converting a tensor to a Python boolean might cause the trace to be incorrect\.",
    r"Iterating over a tensor might cause the trace to be incorrect\.",  # q, k, v = projections (a fixed 3)
)


class TracedNetwork(nn.Module):
    """A traced network ``[B, C, H, W] -> [B, K, H, W]`` as a module that ``torch.jit.script`` compiles."""

    def __init__(self, traced: torch.jit.ScriptModule):
        super().__init__()
        self.traced = traced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.traced(x)


class ScriptedByTracing:
    """Mixin for networks with ``in_channels``: ``torch.jit.script(network)`` returns their eval-mode trace.

    Subclasses set ``torchscript_obstacle`` (what TorchScript refuses to compile, for the model card) and may set
    ``script_example_size`` (instance or class) to the input side their shapes are fixed at.
    """

    torchscript_obstacle: ClassVar[str] = ""
    script_example_size: int = SCRIPT_EXAMPLE_SIZE

    def __prepare_scriptable__(self) -> nn.Module:
        """Called by ``torch.jit.script``: the network (left in its mode) traced in eval mode, without gradients."""
        size = self.script_example_size
        example = torch.rand(1, self.in_channels, size, size, device=next(self.parameters()).device)
        training = self.training
        self.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                for message in TRACE_CONSTANTS:  # the input checks, which hold at the example's size
                    warnings.filterwarnings("ignore", message=message, category=torch.jit.TracerWarning)
                traced = torch.jit.trace(self, example, check_trace=False)  # tests compare it with the network
        finally:
            self.train(training)
        return TracedNetwork(traced)


def torchscript_obstacle(network_name: str) -> str:
    """What TorchScript cannot compile in the registered network ``network_name`` ("" when it scripts as written)."""
    return getattr(network_facts(network_name).network, "torchscript_obstacle", "")
