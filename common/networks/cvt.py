"""CvT-13 (convolutional token embedding and projections) with a cascaded decoder; QKV, KV or KV+Pos attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .base import check_image_batch, refuse_deep_supervision
from .kv_transformers import (
    AttentionKind,
    CascadedUpsampler,
    ConvProjectionAttention,
    KeyValueAttention,
    TransformerBlock,
)
from .layers import grid_to_tokens, tokens_to_grid
from .papers import KV_ATTENTION_CITATION
from .registry import register_network
from .scripting import ScriptedByTracing


class ConvEmbedding(nn.Module):
    """CvT's convolutional token embedding ``[B, in, H, W] -> [B, C, H/s, W/s]``: Conv (bias) + LayerNorm."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        size = (x.shape[-2], x.shape[-1])
        return tokens_to_grid(self.norm(grid_to_tokens(x)), size)


class CvTStage(nn.Module):
    """One CvT stage ``[B, in, H, W] -> [B, C, H/s, W/s]``: convolutional embedding, then transformer blocks."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        embedding: tuple[int, int, int],
        num_heads: int,
        drop_paths: Sequence[float],
        attention: AttentionKind,
        mlp_ratio: int,
        **attention_options,
    ):
        super().__init__()
        self.embed = ConvEmbedding(in_channels, dim, *embedding)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim, ConvProjectionAttention(dim, num_heads, attention, **attention_options), mlp_ratio, rate
            )
            for rate in drop_paths
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        size = (x.shape[-2], x.shape[-1])
        x = grid_to_tokens(x)
        for block in self.blocks:
            x = block(x, size)
        return tokens_to_grid(x, size)


class CvT(ScriptedByTracing, nn.Module):
    """CvT-13 encoder (three stages at 1/4, 1/8, 1/16) + TransUNet's cascaded upsampler.

    Stages: embeddings Conv7x7 s4 p2, Conv3x3 s2 p1, Conv3x3 s2 p1; widths (64, 192, 384), heads (1, 3, 6),
    depths (1, 2, 10), MLP ratio 4, K/V stride 2, no class token. The decoder starts from the 1/16 map with the
    1/8 and 1/4 stage outputs as skips and no skips at 1/2 and 1/1; Conv3x3 head.
    Stochastic depth rises linearly over all blocks. KV forms: see :class:`ConvProjectionAttention`.

    Args: as :class:`SETR` (``embed_dims``, ``depths``, ``num_heads`` per stage), plus ``decoder_channels``.

    Examples::

        >>> import torch
        >>> net = CvT(num_classes=3, attention="kv", embed_dims=(16, 32, 64), depths=(1, 1, 2), num_heads=(1, 2, 2))
        >>> net.eval()(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """

    torchscript_obstacle = (
        "the shared key-value attention (common.networks.kv_transformers) defines a nested function in its "
        "forward pass, formats an error with !r and calls helpers with untyped arguments: TorchScript compiles "
        "none of these"
    )

    EMBEDDINGS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        attention: AttentionKind = "qkv",
        embed_dims: Sequence[int] = (64, 192, 384),
        depths: Sequence[int] = (1, 2, 10),
        num_heads: Sequence[int] = (1, 3, 6),
        mlp_ratio: int = 4,
        drop_path_rate: float = 0.1,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        deep_supervision: bool = False,
        **attention_options,
    ):
        super().__init__()
        refuse_deep_supervision("cvt", deep_supervision)
        if not len(embed_dims) == len(depths) == len(num_heads) == 3:
            raise ValueError(f"expected 3 stages, got widths {embed_dims}, depths {depths}, heads {num_heads}")
        self.in_channels = in_channels
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        inputs = [in_channels, *embed_dims[:-1]]
        self.stages = nn.ModuleList(
            CvTStage(
                inputs[i],
                embed_dims[i],
                self.EMBEDDINGS[i],
                num_heads[i],
                rates[sum(depths[:i]) : sum(depths[: i + 1])],
                attention,
                mlp_ratio,
                **attention_options,
            )
            for i in range(3)
        )
        self.decoder = CascadedUpsampler(embed_dims[2], (embed_dims[1], embed_dims[0], 0, 0), decoder_channels)
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in, H, W]`` -> logits ``[B, K, H, W]``."""
        check_image_batch(x, self.in_channels, 16)
        f4 = self.stages[0](x)
        f8 = self.stages[1](f4)
        f16 = self.stages[2](f8)
        return self.head(self.decoder(f16, (f8, f4, None, None)))


register_network(
    CvT, "cvt", options_to=(ConvProjectionAttention, KeyValueAttention), citations=(KV_ATTENTION_CITATION,)
)
