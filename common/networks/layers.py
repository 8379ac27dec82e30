"""Low-level pieces of the networks (MONAI's sense of ``layers``): token/grid views, rotary embedding, RMSNorm,
batch-norm folding, a 1x1 convolution as one matrix product. Composed blocks are in :mod:`.blocks`.

Token tensors are ``[B, N, C]`` with ``N = H * W`` in row-major order, which is the same memory as an
NHWC image. :func:`tokens_to_grid` and :func:`grid_to_tokens` switch between the two views without
copying: the grid view is an NCHW tensor in channels-last memory, which PyTorch convolutions keep.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def tokens_to_grid(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, N, C]`` tokens -> ``[B, C, H, W]`` (channels-last memory, no copy when ``x`` is contiguous)."""
    b, n, c = x.shape
    h, w = size
    if n != h * w:
        raise ValueError(f"{n} tokens do not fill a {h} x {w} grid")
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H * W, C]`` tokens (no copy when ``x`` is channels-last)."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def rotary_tables(
    num_positions: int, dim: int, base: float = 10000.0, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables ``[N, dim // 2]`` for rotary embedding over positions ``0 .. N-1``."""
    inv_freq = base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = torch.arange(num_positions, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs ``(2i, 2i+1)`` of ``x [..., N, D]`` by the angles in ``cos, sin [N, D/2]``."""
    pairs = x.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis with a learnable weight: ``[..., D] -> [..., D]``, float32 or wider.

    Computed in float32 whatever the input dtype: squares of float16 activations above 256 overflow. Written out
    with elementary operations (not ``torch.rms_norm``) so ONNX and TorchScript exports carry it.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + self.eps) * self.weight


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``[O, I, k, k]`` and bias ``[O]`` of one convolution equal to ``norm(conv(x))`` (running statistics)."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale[:, None, None, None], bias


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution (``weight [O, C, 1, 1]``) as one matrix product: ``[B, C, H, W] -> [B, O, H, W]``.

    Much faster than the convolution kernel for few output channels at high resolution when ``x`` is
    channels-last (the token view is then free); the result is channels-last.
    """
    return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)
