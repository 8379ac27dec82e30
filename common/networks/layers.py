"""Small layers shared by the decoders: token/grid views, rotary embedding, residual conv block, FFNs.

Token tensors are ``[B, N, C]`` with ``N = H * W`` in row-major order, which is the same memory as an
NHWC image. :func:`tokens_to_grid` and :func:`grid_to_tokens` switch between the two views without
copying: the grid view is an NCHW tensor in channels-last memory, which PyTorch convolutions keep.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

FFNKind = Literal["mixffn", "swiglu", "mlp"]


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


class ResBlock(nn.Module):
    """Full-resolution residual branch: ``[B, in, H, W] -> [B, out, H, W]``.

    Conv3x3(in->in) BN ReLU Conv3x3(in->out) BN, plus Conv1x1(in->out) BN shortcut when ``in != out``; ReLU of the sum.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if in_channels != out_channels:
            self.conv3 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
            self.norm3 = nn.BatchNorm2d(out_channels)
        else:
            self.conv3 = None
            self.norm3 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        shortcut = x if self.conv3 is None or self.norm3 is None else self.norm3(self.conv3(x))
        return self.relu(y + shortcut)

    def folded(self, x: torch.Tensor) -> torch.Tensor:
        """The eval-mode map (running statistics) in two convolutions, channels-last ``[B, out, H, W]``.

        The batch norms are folded into the convolutions and the shortcut joins the second convolution as its
        centre tap on the concatenated input ``[y, x]``: no full-resolution norm or sum pass.
        """
        weight, bias = fold_batch_norm(self.conv1, self.norm1)
        y = F.relu(F.conv2d(x, weight, bias, padding=1))
        weight, bias = fold_batch_norm(self.conv2, self.norm2)
        if self.conv3 is None or self.norm3 is None:
            return F.relu(F.conv2d(y, weight, bias, padding=1) + x).contiguous(memory_format=torch.channels_last)
        shortcut_weight, shortcut_bias = fold_batch_norm(self.conv3, self.norm3)
        weight = torch.cat((weight, F.pad(shortcut_weight, (1, 1, 1, 1))), dim=1)  # 1x1 -> centre of 3x3
        joined = torch.cat((y, x), dim=1).contiguous(memory_format=torch.channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)
        return F.relu(F.conv2d(joined, weight, bias + shortcut_bias, padding=1), inplace=True)


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution (``weight [O, C, 1, 1]``) as one matrix product: ``[B, C, H, W] -> [B, O, H, W]``.

    Much faster than the convolution kernel for few output channels at high resolution when ``x`` is
    channels-last (the token view is then free); the result is channels-last.
    """
    return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)


class MLP(nn.Module):
    """Two-layer GELU MLP on tokens: ``[B, N, C] -> [B, N, C]`` with hidden ``ratio * C``."""

    def __init__(self, dim: int, ratio: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(dim, ratio * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ratio * dim, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """SwiGLU FFN on tokens: ``fc1 (C -> 2h)``, split ``a, b``, ``a * SiLU(b)``, ``fc2 (h -> C)``; ``h = ratio * C``."""

    def __init__(self, dim: int, ratio: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * ratio * dim)
        self.fc2 = nn.Linear(ratio * dim, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        a, b = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(a * F.silu(b))


class MixFFN(nn.Module):
    """Gated Mix-FFN on the token grid: ``[B, N, C] -> [B, N, C]``, hidden ``h = ratio * C``.

    Conv1x1 (C -> 2h) SiLU, depthwise Conv kxk (2h), split ``a, b``, ``a * SiLU(b)``, Conv1x1 (h -> C, no bias).
    """

    def __init__(self, dim: int, ratio: int = 4, kernel_size: int = 3):
        super().__init__()
        hidden = ratio * dim
        self.pwc1 = nn.Conv2d(dim, 2 * hidden, 1)
        self.dwc = nn.Conv2d(2 * hidden, 2 * hidden, kernel_size, padding=kernel_size // 2, groups=2 * hidden)
        self.pwc2 = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.dwc(F.silu(self.pwc1(tokens_to_grid(x, size))))
        a, b = y.chunk(2, dim=1)
        return grid_to_tokens(self.pwc2(a * F.silu(b)))


def build_ffn(kind: FFNKind, dim: int, kernel_size: int = 3) -> nn.Module:
    """The decoder FFN named ``kind`` for ``dim`` channels (hidden width 4 * dim)."""
    if kind == "mixffn":
        return MixFFN(dim, kernel_size=kernel_size)
    if kind == "swiglu":
        return SwiGLU(dim)
    if kind == "mlp":
        return MLP(dim)
    raise ValueError(f"unknown ffn {kind!r}; expected 'mixffn', 'swiglu' or 'mlp'")
