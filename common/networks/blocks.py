"""Composed blocks shared by the networks (MONAI's sense of ``blocks``): the full-resolution residual block and the
token FFNs (GELU MLP, SwiGLU, gated Mix-FFN). Token tensors are ``[B, N, C]``, as in :mod:`.layers`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import fold_batch_norm, grid_to_tokens, tokens_to_grid

FFNKind = Literal["mixffn", "swiglu", "mlp"]


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
