"""Key-value (KV) attention and the transformer and decoder parts of the networks built with it.

The networks are :class:`~.setr.SETR`, :class:`~.transunet.TransUNet` and :class:`~.cvt.CvT` (one file each).

References: Borji, "Key-Value Transformer" (arXiv 2305.19129); Hwa, Holmes and Drechsler, "Exploring the
Integration of Key-Value Attention Into Pure and Hybrid Transformers for Semantic Segmentation"
(arXiv 2503.18862). Every network takes ``attention="qkv" | "kv" | "kv_pos"``:

- ``qkv``: ``softmax(Q K^T / sqrt(d_h)) V``, then ``W_O``.
- ``kv``: no query projection; one ``Linear(d -> 2d)`` gives K and V and the keys serve as queries:
  ``softmax(K K^T / sqrt(d_h)) V``, then ``W_O``. The logits are symmetric. Saves ``W_Q`` (d * d weights,
  plus d with ``qkv_bias``) per block.
- ``kv_pos``: ``logit_ij = a (k_i . k_j) / sqrt(d_h) + w . P_ij + b`` with ``P_ij`` the fixed pair encoding
  of :func:`pair_encoding` and ``(a, w, b)`` one ``Linear(d_p + 1 -> 1)`` shared by the heads.

Shapes: input ``[B, in_channels, H, W]`` with H and W divisible by 16; output logits ``[B, num_classes, H, W]``
(UW-Madison bundles read them as three sigmoid channels). Token tensors are ``[B, N, C]`` with grid ``size``.

Decisions where the papers are silent:
- ``qkv_bias`` (off by default, as the KV papers' ``Linear(d -> 2d, no bias)``) applies to both forms, so QKV
  and KV differ by ``W_Q`` alone.
- KV+Pos: ``d_p = 32`` pair channels; ``(a, w, b)`` start at ``(1, 0, 0)``, so KV+Pos starts as KV.
- Default sizes are small for 224 x 224 MRI: see :class:`~.setr.SETR`, :class:`~.transunet.TransUNet` and
  :class:`~.cvt.CvT`.
  At 224 x 224, 1 channel in, 3 out (ptflops 0.7.4 MACs, which omit the attention products), QKV -> KV:
  SETR 24.11 M / 14.15 G -> 22.34 M / 13.81 G; TransUNet 35.91 M / 14.94 G -> 34.14 M / 14.59 G;
  CvT 24.17 M / 9.75 G -> 22.57 M / 9.11 G. KV+Pos adds 33 parameters per block to KV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .blocks import MLP
from .layers import grid_to_tokens, rotary_tables, tokens_to_grid

AttentionKind = Literal["qkv", "kv", "kv_pos"]
ATTENTION_KINDS = ("qkv", "kv", "kv_pos")
PAIR_CHANNELS = 32
MAX_PAIR_TOKENS = 1024


def pair_encoding(num_tokens: int, channels: int = PAIR_CHANNELS, base: float = 10000.0, device=None) -> torch.Tensor:
    """Fixed 2-D sinusoidal encoding ``P [N, N, channels]`` of the cell (i, j) of an N x N attention map.

    The first ``channels / 2`` channels encode the query index i, the rest the key index j, each as
    interleaved ``(sin(t * f_k), cos(t * f_k))`` with ``f_k = base^(-4k / channels)``. Memory O(N^2 channels).
    Because ``w . P_ij`` splits into a term in i (constant along a softmax row) and a term in j, what reaches
    the attention weights is a learned per-key bias.
    """
    if channels <= 0 or channels % 4:
        raise ValueError(f"pair encoding channels must be a positive multiple of 4, got {channels}")
    half = channels // 2
    cos, sin = rotary_tables(num_tokens, half, base, device)  # [N, half / 2]
    axis = torch.stack((sin, cos), dim=-1).flatten(-2)  # [N, half]
    size = (num_tokens, num_tokens, half)
    return torch.cat((axis[:, None, :].expand(size), axis[None, :, :].expand(size)), dim=-1)


class KeyValueAttention(nn.Module):
    """Multi-head softmax self-attention in QKV, KV or KV+Pos form, ``[B, M, C] -> [B, N, C]``.

    Keys and values come from ``x`` ``[B, M, C]``; with ``"qkv"`` the queries come from ``query_input``
    ``[B, N, C]`` (default ``x``), with the KV forms the keys are the queries (``N = M``).

    Args:
        dim: channels C.
        num_heads: heads; C must divide evenly.
        attention: ``"qkv"``, ``"kv"`` or ``"kv_pos"``.
        qkv_bias: bias of the query and key/value projections.
        pair_channels: d_p of the KV+Pos pair encoding (the papers use 10 to 50).
        max_pair_tokens: KV+Pos refuses longer sequences (its pair encoding needs N * N * d_p floats).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attention: AttentionKind = "qkv",
        qkv_bias: bool = False,
        pair_channels: int = PAIR_CHANNELS,
        max_pair_tokens: int = MAX_PAIR_TOKENS,
    ):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention {attention!r}; expected one of {ATTENTION_KINDS}")
        if dim % num_heads:
            raise ValueError(f"{dim} channels do not split into {num_heads} heads")
        self.attention, self.num_heads = attention, num_heads
        self.pair_channels, self.max_pair_tokens = pair_channels, max_pair_tokens
        self.query = nn.Linear(dim, dim, bias=qkv_bias) if attention == "qkv" else None
        self.key_value = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        if attention == "kv_pos":
            self.pair_logit = nn.Linear(pair_channels + 1, 1)  # weight [a, w...], bias b
            with torch.no_grad():
                self.pair_logit.weight.zero_()
                self.pair_logit.weight[0, 0] = 1.0
                self.pair_logit.bias.zero_()
        else:
            self.pair_logit = None
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int], query_input: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, M, C]`` -> ``[B, N, C]``; ``size`` (the token grid) is unused: attention is global."""
        q, k, v = self._heads(x, query_input)
        if self.pair_logit is None:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            scale, position = self._pair_terms(k.shape[-2], k.device)
            y = F.scaled_dot_product_attention(q, k * scale, v, attn_mask=position.to(q.dtype))
        b, h, n, d = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, n, h * d))

    def attention_logits(self, x: torch.Tensor, query_input: torch.Tensor | None = None) -> torch.Tensor:
        """The pre-softmax logits ``[B, heads, N, M]`` of :meth:`forward` (explicit; for tests and inspection)."""
        q, k, _ = self._heads(x, query_input)
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if self.pair_logit is None:
            return logits
        scale, position = self._pair_terms(k.shape[-2], k.device)
        return scale * logits + position

    def _heads(
        self, x: torch.Tensor, query_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``[B, heads, N, D]``, keys and values ``[B, heads, M, D]``."""
        if query_input is not None and self.query is None:
            raise ValueError(f"{self.attention!r} attention has no query projection: its keys are the queries")

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, heads, N, D]
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        k, v = self.key_value(x).chunk(2, dim=-1)
        k, v = heads(k), heads(v)
        q = k if self.query is None else heads(self.query(x if query_input is None else query_input))
        return q, k, v

    def _pair_terms(self, num_tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """KV+Pos ``a`` (scalar tensor) and ``w . P + b`` ``[N, N]``, refusing sequences over the token limit."""
        if num_tokens > self.max_pair_tokens:
            megabytes = num_tokens**2 * self.pair_channels * 4 / 2**20
            raise ValueError(
                f"KV+Pos attention over {num_tokens} tokens needs a {num_tokens} x {num_tokens} x "
                f"{self.pair_channels} pair encoding ({megabytes:.0f} MiB); the limit is {self.max_pair_tokens} "
                "tokens: use a smaller input, attention='kv', or a larger max_pair_tokens"
            )
        weight = self.pair_logit.weight[0]
        encoding = pair_encoding(num_tokens, self.pair_channels, device=device)
        return weight[0], encoding @ weight[1:] + self.pair_logit.bias


class TransformerBlock(nn.Module):
    """Pre-norm block on tokens ``[B, N, C]``: ``x + DropPath(attn(LN(x)))``, ``x + DropPath(MLP(LN(x)))``.

    ``attn`` is any token mixer called as ``attn(tokens, size)``.
    """

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: int = 4, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x), size))


class TransformerEncoder(nn.Module):
    """ViT encoder on tokens ``[B, N, C]``: learned position embedding, blocks, final LayerNorm.

    The embedding is learned for ``grid_size`` and resized bicubically for other grids.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        grid_size: tuple[int, int],
        attention: AttentionKind = "qkv",
        mlp_ratio: int = 4,
        drop_path_rate: float = 0.0,
        **attention_options,
    ):
        super().__init__()
        self.grid_size = grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_size[0] * grid_size[1], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, KeyValueAttention(dim, num_heads, attention, **attention_options), mlp_ratio, rate)
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self._position_embedding(size)
        for block in self.blocks:
            x = block(x, size)
        return self.norm(x)

    def _position_embedding(self, size: tuple[int, int]) -> torch.Tensor:
        """``[1, h * w, C]`` position embedding for the grid ``size``."""
        if tuple(size) == tuple(self.grid_size):
            return self.pos_embed
        grid = tokens_to_grid(self.pos_embed, self.grid_size)
        return grid_to_tokens(F.interpolate(grid, size=size, mode="bicubic", align_corners=False))


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UpBlock(nn.Module):
    """TransUNet decoder block ``[B, in, h, w]`` (+ skip ``[B, skip, 2h, 2w]``) -> ``[B, out, 2h, 2w]``.

    Bilinear x2 (align_corners, as TransUNet), concatenate the skip if any, 2 x (Conv3x3 BN ReLU).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = conv_bn_relu(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat((x, skip), dim=1)
        return self.conv2(self.conv1(x))


class CascadedUpsampler(nn.Module):
    """TransUNet's cascaded upsampler: Conv3x3 (in -> 512) BN ReLU, then one :class:`UpBlock` per decoder width.

    ``skip_channels[i]`` (0 for none) is the skip of block i, coarse to fine; ``forward(x, skips)`` takes the
    skip maps in the same order (``None`` where ``skip_channels`` is 0). Output ``[B, decoder_channels[-1], ...]``.
    """

    def __init__(
        self, in_channels: int, skip_channels: Sequence[int], decoder_channels: Sequence[int], width: int = 512
    ):
        super().__init__()
        if len(skip_channels) != len(decoder_channels):
            raise ValueError(f"{len(skip_channels)} skips for {len(decoder_channels)} decoder blocks")
        self.conv_more = conv_bn_relu(in_channels, width)
        inputs = [width, *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(UpBlock(i, s, o) for i, s, o in zip(inputs, skip_channels, decoder_channels))

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor | None]) -> torch.Tensor:
        x = self.conv_more(x)
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return x


def depthwise_conv_bn(dim: int, stride: int) -> nn.Sequential:
    """CvT's convolutional projection: depthwise Conv3x3 (no bias) + BN, ``[B, C, H, W] -> [B, C, H/s, W/s]``."""
    return nn.Sequential(nn.Conv2d(dim, dim, 3, stride, padding=1, groups=dim, bias=False), nn.BatchNorm2d(dim))


class ConvProjectionAttention(nn.Module):
    """CvT attention with convolutional projections, tokens ``[B, N, C] -> [B, N, C]``.

    Keys and values share one strided projection (``depthwise_conv_bn``, stride ``kv_stride``) feeding the
    single K/V Linear; with ``"qkv"`` the queries have their own unstrided projection. With the KV forms the
    queries are the strided keys: attention runs on the M = N / kv_stride^2 strided tokens (square, symmetric
    logits, and KV+Pos's pair encoding stays M x M) and its output is resized bilinearly to the N-token grid.
    ``W_O`` runs before the resize; both are linear with weights summing to one, so the order does not matter.
    """

    def __init__(
        self, dim: int, num_heads: int, attention: AttentionKind = "qkv", kv_stride: int = 2, **attention_options
    ):
        super().__init__()
        self.query_conv = depthwise_conv_bn(dim, 1) if attention == "qkv" else None
        self.key_value_conv = depthwise_conv_bn(dim, kv_stride)
        self.attn = KeyValueAttention(dim, num_heads, attention, **attention_options)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        keys, key_size, queries = self._project(x, size)
        y = self.attn(keys, key_size, query_input=queries)
        if queries is None:
            y = F.interpolate(tokens_to_grid(y, key_size), size=size, mode="bilinear", align_corners=False)
            y = grid_to_tokens(y)
        return y

    def attention_logits(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Pre-softmax logits ``[B, heads, N or M, M]`` (M strided key tokens)."""
        keys, _, queries = self._project(x, size)
        return self.attn.attention_logits(keys, query_input=queries)

    def _project(
        self, x: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
        """Strided key/value tokens ``[B, M, C]``, their grid, and unstrided query tokens (``None`` for KV)."""
        grid = tokens_to_grid(x, size)
        keys = self.key_value_conv(grid)
        queries = None if self.query_conv is None else grid_to_tokens(self.query_conv(grid))
        return grid_to_tokens(keys), (keys.shape[-2], keys.shape[-1]), queries
