"""Parameters, MACs the paper's way, and true FLOPs.

The GDLA paper reports ``ptflops.get_model_complexity_info(model, (1, 224, 224))`` MACs (ptflops 0.7.4)
with the deep-supervision heads on, truncated to two decimals, and calls them "FLOPs". That tool counts
modules (convolutions, linear layers, norms, activations) and a few functionals (``F.softmax``,
``F.interpolate``, ``F.silu``, ``F.elu``, ``torch.matmul``), but not the ``@`` products of attention.

Our softmax baselines use fused ``scaled_dot_product_attention`` (no N x N map in memory) where the
authors' code built the map and called ``F.softmax`` on it, and apply rotary embedding in place of the
authors' elementwise products. :data:`PAPER_EXTRA_MACS` adds what ptflops charged the authors for those
operations (one per softmax-map element, two per rotated query/key element), so the paper's figures come
out for all four models. The final full-resolution head is counted as written (``fast_eval_head`` switched
off while counting), as the authors' code ran it. :func:`true_flops` counts every matrix product and
convolution, attention included.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count

from ..data.input_size import INPUT_SIZE
from .pvt_decoders import DifferentialAttention, PVTDecoderNet, RotarySelfAttention

PAPER_PTFLOPS_VERSION = "0.7.4"


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not), as ptflops reports them."""
    return sum(p.numel() for p in model.parameters())


def _softmax_and_rotary_macs(maps_per_head: int) -> Callable[[nn.Module, torch.Tensor], int]:
    """MACs ptflops charged the authors' softmax attention: the ``F.softmax`` maps plus rotary products."""

    def extra(module: nn.Module, tokens: torch.Tensor) -> int:
        batch, n, channels = tokens.shape
        softmax_elements = batch * maps_per_head * module.num_heads * n * n
        rotary_products = 2 * (2 * batch * n * channels)  # two products per element of q and of k
        return softmax_elements + rotary_products

    return extra


PAPER_EXTRA_MACS: dict[type, Callable[[nn.Module, torch.Tensor], int]] = {
    RotarySelfAttention: _softmax_and_rotary_macs(maps_per_head=1),
    DifferentialAttention: _softmax_and_rotary_macs(maps_per_head=2),
}


class _AllOutputs(nn.Module):
    """Runs ``forward_all`` (every deep-supervision head) when the network has it."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor):
        forward_all = getattr(self.network, "forward_all", None)
        return forward_all(x) if forward_all is not None else self.network(x)


def paper_macs(model: nn.Module, input_size: tuple[int, int, int] = (1, *INPUT_SIZE)) -> int:
    """MACs counted as the paper did: ptflops (0.7.4), all output heads, batch 1, ``input_size = (C, H, W)``."""
    import ptflops

    installed = importlib.metadata.version("ptflops")
    if installed != PAPER_PTFLOPS_VERSION:
        warnings.warn(
            f"ptflops {installed} is installed; the paper's counts come from {PAPER_PTFLOPS_VERSION} "
            "(0.7.5 counts transposed convolutions about 0.61 G lower for these models)",
            stacklevel=2,
        )
    extra = [0]

    def add_extra(module: nn.Module, inputs: tuple, output) -> None:
        extra[0] += PAPER_EXTRA_MACS[type(module)](module, inputs[0])

    handles = [m.register_forward_hook(add_extra) for m in model.modules() if type(m) in PAPER_EXTRA_MACS]
    fast_heads = {m: m.fast_eval_head for m in model.modules() if isinstance(m, PVTDecoderNet)}
    was_training = model.training
    model.eval()
    for decoder in fast_heads:
        decoder.fast_eval_head = False
    try:
        macs, _ = ptflops.get_model_complexity_info(
            _AllOutputs(model), input_size, as_strings=False, print_per_layer_stat=False, verbose=False
        )
    finally:
        model.train(was_training)
        for decoder, fast in fast_heads.items():
            decoder.fast_eval_head = fast
        for handle in handles:
            handle.remove()
    return int(macs) + extra[0]


def _register_cpu_flash_attention_formula() -> None:
    """Let FlopCounterMode count PyTorch's CPU flash-attention kernel like the GPU ones."""
    target = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if target is None or target in flop_registry:
        return

    @register_flop_formula(target)
    def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


_register_cpu_flash_attention_formula()


def true_flops(model: nn.Module, input_size: tuple[int, int, int] = (1, *INPUT_SIZE), all_heads: bool = True) -> int:
    """FLOPs (2 per multiply-accumulate) of every matmul, convolution and attention product, batch 1: of all heads,
    or with ``all_heads=False`` of the eval-mode forward pass as inference runs it (final output only)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            (_AllOutputs(model) if all_heads else model)(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def truncate(value: float, decimals: int = 2) -> float:
    """Truncate (not round) to ``decimals`` places, as the paper's table does."""
    scale = 10**decimals
    return int(value * scale) / scale
