"""MLLA-UNet: a U-shaped network of Mamba-like linear attention (MLLA) blocks.

Reference: Jiang et al., "MLLA-UNet: Mamba-like Linear Attention in an Efficient U-Shape Model for Medical
Image Segmentation" (arXiv 2410.23738), built on MLLA (Han et al., "Demystify Mamba in Vision: A Linear
Attention Perspective", NeurIPS 2024) and on the Swin-Unet layout. Defaults are the MLLA-T configuration.

Shapes: input ``[B, in_channels, H, W]`` with H and W divisible by 32; output ``[B, num_classes, H, W]``.
Inside, stages work on tokens ``[B, N, C]`` with their grid ``size = (h, w)``. At 224 x 224 with 9 classes:
28.51 M parameters and 5.95 G MACs by ptflops 0.7.4 (which skips the ``@`` attention products, 0.13 G).

Open decisions (the paper and spec are silent; chosen here):
- A LayerNorm closes the encoder (on the 1/32 features) and another the decoder (before the head), as in
  Swin-Unet, whose code MLLA-UNet extends.
- The head's Linear(C -> 16C) and its Conv1x1 have no bias (Swin-Unet's final expand and output conv);
  EDSM/EUSM pointwise convolutions have a bias (MLLA's ``ConvLayer`` default).
- Stochastic depth rises linearly from 0 to ``drop_path_rate`` over the encoder blocks; each decoder stage
  reuses the first rates of the encoder stage at its resolution (Swin-Unet's mirroring).
- The rotary tables are built for the input's grid at every call, so any H, W divisible by 32 works
  (MLLA fixes the grid at construction).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .attention import elu_feature_map
from .base import check_image_batch, refuse_deep_supervision
from .blocks import MLP
from .layers import apply_rotary, grid_to_tokens, rotary_tables, tokens_to_grid
from .papers import MLLA_UNET_CITATION
from .registry import register_network
from .scripting import ScriptedByTracing

MLLA_EPS = 1e-6


def rotary_tables_2d(
    size: tuple[int, int], dim: int, base: float = 10000.0, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables ``[H * W, dim // 2]`` for 2-D rotary embedding over a row-major ``H x W`` grid.

    With ``k_max = dim // 4`` and ``theta_k = base^(-k / k_max)``, channel pair ``k < k_max`` turns by
    ``row * theta_k`` and pair ``k_max + k`` by ``col * theta_k`` (MLLA's RoPE); use with :func:`apply_rotary`.
    """
    if dim % 4:
        raise ValueError(f"2-D rotary embedding needs channels divisible by 4, got {dim}")
    height, width = size
    row_cos, row_sin = rotary_tables(height, dim // 2, base, device, dtype)  # [H, k_max]
    col_cos, col_sin = rotary_tables(width, dim // 2, base, device, dtype)  # [W, k_max]

    def grid(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        k_max = row.shape[-1]
        both = (row[:, None, :].expand(height, width, k_max), col[None, :, :].expand(height, width, k_max))
        return torch.cat(both, dim=-1).reshape(height * width, 2 * k_max)

    return grid(row_cos, col_cos), grid(row_sin, col_sin)


def rotary_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float = MLLA_EPS
) -> torch.Tensor:
    """MLLA's kernel attention: ``q, k [..., N, d]`` (feature-mapped), ``v [..., N, e]`` -> ``[..., N, e]``.

    ``out_n = rot(q_n) [(1/N) sum_m rot(k_m)^T v_m] / (q_n . mean_m k_m + eps)``: the numerator uses the
    rotated queries and keys, the normaliser the unrotated ones. ``cos, sin [N, d/2]`` give the rotation.
    Linear in N; accumulates in float32 and returns the input dtype.
    """
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    with torch.autocast(device_type=q.device.type, enabled=False):
        cos, sin = cos.float(), sin.float()
        q_rot, k_rot = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        kv = k_rot.transpose(-2, -1) @ v / k.shape[-2]  # [..., d, e]
        normaliser = (q * k.mean(dim=-2, keepdim=True)).sum(dim=-1, keepdim=True) + eps  # [..., N, 1]
        out = (q_rot @ kv) / normaliser
    return out.to(dtype)


class MambaLikeLinearAttention(nn.Module):
    """MLLA token mixer ``[B, N, C] -> [B, N, C]``.

    ``q, k = ELU(qk(x)) + 1`` (one Linear C -> 2C), ``v = x``; 2-D rotary embedding over all C channels,
    then heads of ``C / num_heads`` channels mix by :func:`rotary_linear_attention`; plus LePE, a depthwise
    Conv3x3 of ``v``. No output projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads or dim % 4:
            raise ValueError(f"{dim} channels do not split into {num_heads} heads with 2-D rotary pairs")
        self.num_heads = num_heads
        self.qk = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        q, k = elu_feature_map(self.qk(x)).chunk(2, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:  # [..., N, C] -> [..., H, N, C / H]
            return t.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)

        cos, sin = rotary_tables_2d(size, c, device=x.device)  # [N, C/2]: rotation over all C channels
        y = rotary_linear_attention(heads(q), heads(k), heads(x), heads(cos), heads(sin))
        return y.transpose(1, 2).reshape(b, n, c) + grid_to_tokens(self.lepe(tokens_to_grid(x, size)))


class DepthwiseConvResidual(nn.Module):
    """``x + DWConv3x3(x)`` on tokens ``[B, N, C]`` (MLLA's conditional position encoding)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return x + grid_to_tokens(self.conv(tokens_to_grid(x, size)))


class MLLABlock(nn.Module):
    """MLLA block on tokens ``[B, N, C]``.

    ``x += DWConv(x)``; ``h = LN(x)``; ``g = SiLU(act_proj(h))``; ``h = SiLU(DWConv(in_proj(h)))``;
    ``x = x + DropPath(out_proj(MLLA(h) * g))``; ``x += DWConv(x)``; ``x = x + DropPath(MLP(LN(x)))``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4, qkv_bias: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.cpe1 = DepthwiseConvResidual(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.act_proj = nn.Linear(dim, dim)
        self.in_proj = nn.Linear(dim, dim)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.attn = MambaLikeLinearAttention(dim, num_heads, qkv_bias)
        self.out_proj = nn.Linear(dim, dim)
        self.cpe2 = DepthwiseConvResidual(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.cpe1(x, size)
        h = self.norm1(x)
        gate = F.silu(self.act_proj(h))
        h = grid_to_tokens(F.silu(self.dwc(tokens_to_grid(self.in_proj(h), size))))
        x = x + self.drop_path(self.out_proj(self.attn(h, size) * gate))
        x = self.cpe2(x, size)
        return x + self.drop_path(self.mlp(self.norm2(x), size))


class MLLAStage(nn.Module):
    """A sequence of :class:`MLLABlock` on tokens ``[B, N, C]`` at one resolution."""

    def __init__(self, dim: int, num_heads: int, drop_paths: Sequence[float], mlp_ratio: int, qkv_bias: bool):
        super().__init__()
        self.blocks = nn.ModuleList(MLLABlock(dim, num_heads, mlp_ratio, qkv_bias, rate) for rate in drop_paths)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, size)
        return x


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BN (+ ReLU): the stem's unit."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Stem(nn.Module):
    """``[B, in, H, W] -> [B, C, H/4, W/4]``.

    Conv3x3 s2 (-> C/2); residual pair of Conv3x3; Conv3x3 s2 (-> 4C); Conv1x1 (-> C). Convs without bias.
    """

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        half = dim // 2
        self.conv1 = conv_bn(in_channels, half, 3, stride=2)
        self.conv2 = nn.Sequential(conv_bn(half, half, 3), conv_bn(half, half, 3, relu=False))
        self.conv3 = nn.Sequential(conv_bn(half, 4 * dim, 3, stride=2), conv_bn(4 * dim, dim, 1, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv3(self.conv2(x) + x)


class DownSampling(nn.Module):
    """EDSM, tokens ``[B, N, d] -> [B, N/4, 2d]``: Conv1x1 (d -> 8d) ReLU, DWConv3x3 s2 ReLU, Conv1x1 (8d -> 2d) BN."""

    def __init__(self, dim: int, ratio: int = 4):
        super().__init__()
        hidden = 2 * dim * ratio
        self.conv = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1, groups=hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2 * dim, 1),
            nn.BatchNorm2d(2 * dim),
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return grid_to_tokens(self.conv(tokens_to_grid(x, size)))


class UpSampling(nn.Module):
    """EUSM, tokens ``[B, N, d] -> [B, 4N, d/2]``: Conv1x1 (d -> 4d) ReLU, depthwise ConvTranspose3x3 s2,
    Conv1x1 (4d -> d/2) BN, LayerNorm."""

    def __init__(self, dim: int, ratio: int = 4):
        super().__init__()
        hidden = dim * ratio
        self.conv = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(hidden, hidden, 3, stride=2, padding=1, output_padding=1, groups=hidden, bias=False),
            nn.Conv2d(hidden, dim // 2, 1),
            nn.BatchNorm2d(dim // 2),
        )
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.norm(grid_to_tokens(self.conv(tokens_to_grid(x, size))))


class ExpandHead(nn.Module):
    """Tokens ``[B, h*w, C] -> [B, K, 4h, 4w]``: Linear(C -> 16C), 4x4 pixel rearrangement, LayerNorm, Conv1x1."""

    def __init__(self, dim: int, num_classes: int, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.output = nn.Conv2d(dim, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        (h, w), s = size, self.scale
        x = self.expand(x).reshape(b, h, w, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * s * w * s, c)
        return self.output(tokens_to_grid(self.norm(x), (h * s, w * s)))


class MLLAUNet(ScriptedByTracing, nn.Module):
    """MLLA-UNet: stem, four MLLA encoder stages joined by EDSM, three decoder stages joined by EUSM, expand head.

    Encoder: stage i (i = 0..3) at 1/2^(i+2) with ``embed_dim * 2^i`` channels; its input is kept as the skip.
    Decoder: EUSM from 1/32, then at 1/16, 1/8, 1/4: ``Linear(cat(x, skip)) (2d -> d)``, MLLA blocks, EUSM
    (not after the last). Head at 1/4 -> full resolution.

    Args:
        in_channels: image channels; 1 is repeated to 3.
        num_classes: output channels K (logits).
        embed_dim: channels C at 1/4.
        depths: MLLA blocks per encoder stage.
        num_heads: heads per encoder stage (the decoder stage at the same resolution uses the same).
        decoder_depths: MLLA blocks per decoder stage, coarse to fine (1/16, 1/8, 1/4).
        mlp_ratio: MLP hidden width over C.
        qkv_bias: bias of the q/k projection.
        drop_path_rate: largest stochastic depth rate.
        deep_supervision: must be False; MLLA-UNet has one output (an option so that every network has it).

    Examples::

        >>> import torch
        >>> net = MLLAUNet(num_classes=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)).eval()
        >>> net(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 4, 64, 64])
    """

    torchscript_obstacle = (
        "its linear-attention blocks define a nested function inside forward, which TorchScript does not compile"
    )

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 9,
        embed_dim: int = 64,
        depths: Sequence[int] = (2, 4, 8, 4),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        decoder_depths: Sequence[int] = (2, 2, 2),
        mlp_ratio: int = 4,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        deep_supervision: bool = False,
    ):
        super().__init__()
        refuse_deep_supervision("mlla_unet", deep_supervision)
        if len(depths) != 4 or len(num_heads) != 4 or len(decoder_depths) != 3:
            raise ValueError(
                f"expected 4 encoder depths and heads and 3 decoder depths, got {depths}, {num_heads}, {decoder_depths}"
            )
        self.in_channels, self.num_classes = in_channels, num_classes
        dims = [embed_dim * 2**i for i in range(4)]
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stage_rates = [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(4)]

        self.stem = Stem(3 if in_channels == 1 else in_channels, embed_dim)
        self.encoder = nn.ModuleList(
            MLLAStage(dims[i], num_heads[i], stage_rates[i], mlp_ratio, qkv_bias) for i in range(4)
        )
        self.downsample = nn.ModuleList(DownSampling(dims[i]) for i in range(3))
        self.encoder_norm = nn.LayerNorm(dims[3])
        levels = (2, 1, 0)  # decoder stages at 1/16, 1/8, 1/4 use the encoder stage of the same resolution
        self.upsample = nn.ModuleList(UpSampling(dims[i + 1]) for i in levels)
        self.skip_fusion = nn.ModuleList(nn.Linear(2 * dims[i], dims[i]) for i in levels)
        self.decoder = nn.ModuleList(
            MLLAStage(dims[i], num_heads[i], stage_rates[i][:depth], mlp_ratio, qkv_bias)
            for i, depth in zip(levels, decoder_depths)
        )
        self.decoder_norm = nn.LayerNorm(embed_dim)
        self.head = ExpandHead(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in, H, W]`` -> logits ``[B, K, H, W]``."""
        check_image_batch(x, self.in_channels)
        x = self.stem(x.expand(-1, 3, -1, -1) if self.in_channels == 1 else x)
        size = (x.shape[-2], x.shape[-1])
        x = grid_to_tokens(x)
        skips = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                x = self.downsample[i - 1](x, size)
                size = (size[0] // 2, size[1] // 2)
            if i < 3:
                skips.append((x, size))
            x = stage(x, size)
        x = self.encoder_norm(x)
        for up, fuse, stage in zip(self.upsample, self.skip_fusion, self.decoder):
            x = up(x, size)
            skip, size = skips.pop()
            x = stage(fuse(torch.cat((x, skip), dim=-1)), size)
        return self.head(self.decoder_norm(x), size)


register_network(MLLAUNet, "mlla_unet", citations=(MLLA_UNET_CITATION,), paper_model="MLLA-UNet")
