"""SETR-PUP (a ViT encoder with progressive up-sampling) with QKV, KV or KV+Pos attention."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.input_size import INPUT_SIZE
from .base import check_image_batch, refuse_deep_supervision
from .kv_transformers import AttentionKind, KeyValueAttention, TransformerEncoder, conv_bn_relu
from .layers import grid_to_tokens, tokens_to_grid
from .papers import KV_ATTENTION_CITATION
from .registry import register_network
from .scripting import ScriptedByTracing


class ProgressiveUpsamplingHead(nn.Module):
    """SETR-PUP head ``[B, C, h, w] -> [B, K, h * 2^n, w * 2^n]``: n x (Conv3x3 BN ReLU, bilinear x2), Conv1x1."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_upsamplings: int):
        super().__init__()
        self.convs = nn.ModuleList(
            conv_bn_relu(in_channels if i == 0 else channels, channels) for i in range(num_upsamplings)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.interpolate(conv(x), scale_factor=2, mode="bilinear", align_corners=False)
        return self.classifier(x)


class SETR(ScriptedByTracing, nn.Module):
    """SETR-PUP: ViT encoder on non-overlapping patches + progressive upsampling head.

    Default size ViT-S/16 (depth 12, width 384, 6 heads, MLP ratio 4), small enough for 224 x 224 MRI slices
    trained from scratch; head width 256 as in SETR. The final encoder LayerNorm feeds the head.

    Args:
        in_channels: image channels (used as given; no pretrained weights expect three).
        num_classes: output channels (logits).
        attention: ``"qkv"``, ``"kv"`` or ``"kv_pos"``.
        image_size: the size the position embedding is learned at (resized for other inputs).
        patch_size: patch side, a power of two; H and W must be multiples of it.
        embed_dim, depth, num_heads, mlp_ratio: ViT size.
        drop_path_rate: largest stochastic depth rate (rising linearly over the blocks).
        head_channels: width of the upsampling head.
        deep_supervision: must be False.
        attention_options: ``qkv_bias``, ``pair_channels``, ``max_pair_tokens`` of :class:`KeyValueAttention`.

    Examples::

        >>> import torch
        >>> net = SETR(num_classes=3, attention="kv", image_size=64, embed_dim=32, depth=2, num_heads=2).eval()
        >>> net(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """

    torchscript_obstacle = (
        "the shared key-value attention (common.networks.kv_transformers) defines a nested function in its "
        "forward pass, formats an error with !r and calls helpers with untyped arguments: TorchScript compiles "
        "none of these"
    )

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        attention: AttentionKind = "qkv",
        image_size: int = INPUT_SIZE[0],
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: int = 4,
        drop_path_rate: float = 0.1,
        head_channels: int = 256,
        deep_supervision: bool = False,
        **attention_options,
    ):
        super().__init__()
        refuse_deep_supervision("setr", deep_supervision)
        if patch_size & (patch_size - 1) or patch_size < 2:
            raise ValueError(f"patch_size must be a power of two, got {patch_size}")
        self.in_channels, self.patch_size = in_channels, patch_size
        grid = (image_size // patch_size, image_size // patch_size)
        self.script_example_size = image_size  # the position embedding fixes a trace to its size
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.encoder = TransformerEncoder(
            embed_dim, depth, num_heads, grid, attention, mlp_ratio, drop_path_rate, **attention_options
        )
        self.head = ProgressiveUpsamplingHead(embed_dim, head_channels, num_classes, int(math.log2(patch_size)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in, H, W]`` -> logits ``[B, K, H, W]``."""
        check_image_batch(x, self.in_channels, self.patch_size)
        x = self.patch_embed(x)
        size = (x.shape[-2], x.shape[-1])
        x = self.encoder(grid_to_tokens(x), size)
        return self.head(tokens_to_grid(x, size))


register_network(SETR, "setr", options_to=(KeyValueAttention,), citations=(KV_ATTENTION_CITATION,))
