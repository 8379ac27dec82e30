"""PVT-EMCAD: the efficient multi-scale convolutional attention decoder on a PVT-v2 encoder.

Reference: Rahman, Munir and Marculescu, "EMCAD: Efficient Multi-scale Convolutional Attention Decoding for
Medical Image Segmentation", CVPR 2024. Defaults reproduce EMCAD-B2 as the authors trained it on Synapse
(kernel sizes [1, 3, 5], expansion factor 2, LGAG kernel 3 with ``C / 2`` groups, ReLU6 in the decoder).

Decoder, coarse to fine (``x1 .. x4`` are the encoder outputs at 1/4 .. 1/32)::

    d4 = MSCAM_4(x4)
    d3 = MSCAM_3(u3 + LGAG_3(u3, x3)),  u3 = EUCB_3(d4)        # 1/16
    d2 = MSCAM_2(u2 + LGAG_2(u2, x2)),  u2 = EUCB_2(d3)        # 1/8
    d1 = MSCAM_1(u1 + LGAG_1(u1, x1)),  u1 = EUCB_1(d2)        # 1/4
    MSCAM(x) = MSCB(SA(CA(x)))  with CA, SA the channel and spatial attention gates

Four Conv1x1 heads on ``d4, d3, d2, d1``, bilinearly upsampled to the input size.

Details taken from the authors' code where the paper's text differs or is silent (options give the text):

- ReLU6 in EUCB and LGAG as well as in MSCB (the authors' Synapse script passes its ``relu6`` flag to all
  three); the paper's text names ReLU for EUCB and LGAG: ``gate_activation="relu"``. Channel attention
  uses ReLU either way.
- One spatial-attention convolution is shared by all four MSCAMs (98 parameters).
- A 1-channel image passes a Conv1x1 (1 -> 3, bias) + BN + ReLU stem before the encoder (12 parameters);
  ``gray_stem="repeat"`` repeats the channel three times instead, as the PVT-GDLA family does.
- Decoder convolutions start from N(0, 0.02) with zero bias (BN: weight 1, bias 0); the heads and the stem
  keep PyTorch's default initialisation.
- EUCB's channel shuffle uses one channel per group in the authors' code, which leaves the order unchanged,
  so it is left out here; MSCB's shuffle (``gcd(2C, C) = C`` groups) is a real permutation and is kept.

Size with PVT-v2-b2, 3 channels, K = 1: 26,764,399 parameters (encoder 24,849,856, decoder 1,913,515;
published 26.76 M); thop 0.1.1 counts 5.58 G MACs at 256 x 256 (published 5.60 G).

Module names are this project's own, not the authors'. Shapes: input ``[B, in_channels, H, W]`` with H and W
divisible by 32; output ``[B, num_classes, H, W]``, or in training with deep supervision the list
``[out4, out3, out2, out1]`` (coarse to fine) of such maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DeepSupervisionForward, check_image_batch
from .encoders import create_pvt_v2, load_encoder_weights, pvt_v2_features
from .papers import EMCAD_CITATION, PVT_DECODER_CITATIONS, PVT_V2_B2_WEIGHTS
from .registry import register_network
from .scripting import ScriptedByTracing

ActivationKind = Literal["relu", "relu6"]
GrayStem = Literal["conv", "repeat"]

DECODER_INIT_STD = 0.02


def build_activation(kind: ActivationKind) -> nn.Module:
    """``nn.ReLU`` or ``nn.ReLU6`` by name."""
    if kind == "relu":
        return nn.ReLU()
    if kind == "relu6":
        return nn.ReLU6()
    raise ValueError(f"unknown activation {kind!r}; expected 'relu' or 'relu6'")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle of ``[B, C, H, W]``: view the channels as ``[groups, C / groups]``, transpose."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    groups: int = 1,
    bias: bool = False,
    activation: ActivationKind | None = None,
) -> nn.Sequential:
    """Conv kxk ('same' padding) + BN, then the activation if one is named: ``[B, in, H, W] -> [B, out, H, W]``."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(out_channels),
    ]
    if activation is not None:
        layers.append(build_activation(activation))
    return nn.Sequential(*layers)


class ChannelAttention(nn.Module):
    """CBAM-style channel gate ``[B, C, H, W] -> [B, C, H, W]``: ``x * sigmoid(f(avg(x)) + f(max(x)))``.

    ``f`` = Conv1x1 (C -> C / r, no bias), ReLU, Conv1x1 (C / r -> C, no bias), shared by both pools;
    ``r = min(reduction, C)``.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = channels // min(reduction, channels)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)))  # [2B, C, 1, 1]
        avg_out, max_out = self.fc2(F.relu(self.fc1(pooled))).chunk(2)
        return x * torch.sigmoid(avg_out + max_out)


class SpatialAttention(nn.Module):
    """CBAM-style spatial gate ``[B, C, H, W] -> [B, C, H, W]``: ``x * sigmoid(conv([mean_c(x), max_c(x)]))``.

    ``conv`` = Conv kxk (2 -> 1, no bias).
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)), dim=1)  # [B, 2, H, W]
        return x * torch.sigmoid(self.conv(pooled))


class MultiScaleConvBlock(nn.Module):
    """MSCB ``[B, C, H, W] -> [B, C, H, W]``: inverted residual with parallel multi-scale depthwise convolutions.

    ``x + BN(Conv1x1(shuffle(sum_k act(BN(DWConv_k(e))))))`` with ``e = act(BN(Conv1x1(x)))`` of
    ``expansion_factor * C`` channels and k over ``kernel_sizes``; convolutions without bias.
    """

    def __init__(
        self,
        channels: int,
        kernel_sizes: Sequence[int] = (1, 3, 5),
        expansion_factor: int = 2,
        activation: ActivationKind = "relu6",
    ):
        super().__init__()
        expanded = channels * expansion_factor
        self.expand = conv_bn(channels, expanded, activation=activation)
        self.depthwise = nn.ModuleList(
            conv_bn(expanded, expanded, k, groups=expanded, activation=activation) for k in kernel_sizes
        )
        self.shuffle_groups = math.gcd(expanded, channels)
        self.project = conv_bn(expanded, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.expand(x)
        multi_scale = sum(conv(e) for conv in self.depthwise)
        return x + self.project(channel_shuffle(multi_scale, self.shuffle_groups))


class EfficientUpConv(nn.Module):
    """EUCB ``[B, C_in, H, W] -> [B, C_out, 2H, 2W]``: nearest x2, depthwise Conv3x3 + BN + act, Conv1x1 (bias)."""

    def __init__(self, in_channels: int, out_channels: int, activation: ActivationKind = "relu6"):
        super().__init__()
        self.depthwise = conv_bn(in_channels, in_channels, 3, groups=in_channels, activation=activation)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(F.interpolate(x, scale_factor=2.0, mode="nearest")))


class LargeKernelGroupedAttentionGate(nn.Module):
    """LGAG: gate a skip ``[B, C, H, W]`` by the decoder feature ``[B, C, H, W]``; returns the gated skip.

    ``skip * sigmoid(BN(Conv1x1(act(BN(GConv_k(g)) + BN(GConv_k(skip))))))``: the grouped convolutions
    (C -> C / 2, ``C / 2`` groups, bias) map each pair of channels to one; Conv1x1 (C / 2 -> 1, bias).
    """

    def __init__(self, channels: int, kernel_size: int = 3, activation: ActivationKind = "relu6"):
        super().__init__()
        hidden = channels // 2
        groups = hidden if kernel_size > 1 else 1
        self.gate_conv = conv_bn(channels, hidden, kernel_size, groups=groups, bias=True)
        self.skip_conv = conv_bn(channels, hidden, kernel_size, groups=groups, bias=True)
        self.act = build_activation(activation)
        self.attention = nn.Sequential(conv_bn(hidden, 1, bias=True), nn.Sigmoid())

    def forward(self, gate: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return skip * self.attention(self.act(self.gate_conv(gate) + self.skip_conv(skip)))


class EMCADDecoder(nn.Module):
    """The EMCAD decoder on encoder outputs ``[x1, x2, x3, x4]`` (fine to coarse, channels ``channels[::-1]``).

    Stages are indexed coarse to fine: the bottleneck MSCAM on ``x4``, then fusing stages ``0, 1, 2`` at
    1/16, 1/8, 1/4 (up-sample, add the LGAG-gated skip, MSCAM). With ``skip_connections=False`` no LGAG is
    built and the fusing stages see only the up-sampled decoder feature.

    Args:
        channels: stage widths coarse to fine, e.g. ``(512, 320, 128, 64)`` for PVT-v2-b2.
        kernel_sizes: MSCB depthwise kernels.
        expansion_factor: MSCB expansion.
        lgag_kernel_size: LGAG grouped-convolution kernel.
        activation: MSCB activation.
        gate_activation: EUCB and LGAG activation.
        skip_connections: build and use the LGAG-gated skips.
    """

    def __init__(
        self,
        channels: Sequence[int] = (512, 320, 128, 64),
        kernel_sizes: Sequence[int] = (1, 3, 5),
        expansion_factor: int = 2,
        lgag_kernel_size: int = 3,
        activation: ActivationKind = "relu6",
        gate_activation: ActivationKind = "relu6",
        skip_connections: bool = True,
    ):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"expected 4 stage widths (coarse to fine), got {list(channels)}")
        self.channels = tuple(channels)
        self.skip_connections = skip_connections
        self.channel_attention = nn.ModuleList(ChannelAttention(c) for c in channels)
        self.spatial_attention = SpatialAttention()
        self.mscb = nn.ModuleList(MultiScaleConvBlock(c, kernel_sizes, expansion_factor, activation) for c in channels)
        self.up = nn.ModuleList(
            EfficientUpConv(c_in, c_out, gate_activation) for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        if skip_connections:
            self.gates = nn.ModuleList(
                LargeKernelGroupedAttentionGate(c, lgag_kernel_size, gate_activation) for c in channels[1:]
            )
        self.apply(_init_decoder_weights)

    def _mscam(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """MSCAM of level ``level`` (0 = 1/32 .. 3 = 1/4) on ``[B, C, h, w]``."""
        return self.mscb[level](self.spatial_attention(self.channel_attention[level](x)))

    def bottleneck(self, x4: torch.Tensor) -> torch.Tensor:
        """``d4 = MSCAM(x4)``, ``[B, C_4, H/32, W/32]``."""
        return self._mscam(0, x4)

    def fuse(self, stage: int, previous: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Input of fusing stage ``stage``: ``u = EUCB(previous)`` plus, with skips, ``LGAG(u, skip)``."""
        u = self.up[stage](previous)
        return u + self.gates[stage](u, skip) if self.skip_connections else u

    def refine(self, stage: int, h: torch.Tensor) -> torch.Tensor:
        """Output of fusing stage ``stage``: ``MSCAM(h)``, same shape as ``h``."""
        return self._mscam(stage + 1, h)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``[x1, x2, x3, x4]`` -> ``[d4, d3, d2, d1]`` (coarse to fine)."""
        decoded = [self.bottleneck(features[-1])]
        for stage in range(3):
            decoded.append(self.refine(stage, self.fuse(stage, decoded[-1], features[-2 - stage])))
        return decoded


def _init_decoder_weights(module: nn.Module) -> None:
    """The authors' decoder initialisation: convolutions N(0, 0.02) with zero bias; BN weight 1, bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, std=DECODER_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class EMCADNet(DeepSupervisionForward, ScriptedByTracing):
    """PVT-v2 encoder + EMCAD decoder + four prediction heads.

    Implements the stage protocol of :mod:`common.networks.xattnres` (``encode``, ``bottleneck``, ``fuse``,
    ``refine``, ``predict``); its own forward pass runs the same steps.

    Args:
        in_channels: image channels; 1 goes through ``gray_stem`` to 3 channels for the encoder.
        num_classes: output channels K.
        deep_supervision: build the three auxiliary heads; ``forward`` returns all four maps in training.
        encoder: timm PVT-v2 variant, ``pvt_v2_b0`` .. ``pvt_v2_b5``.
        encoder_weights: ImageNet weights file; ``None`` warns that the encoder is random, ``"random"`` does not.
        drop_path_rate: encoder stochastic depth.
        kernel_sizes, expansion_factor, lgag_kernel_size, activation, gate_activation, skip_connections:
            as :class:`EMCADDecoder`.
        gray_stem: ``"conv"`` (Conv1x1 1 -> 3 + BN + ReLU, the authors' code) or ``"repeat"``.

    Examples::

        >>> import torch
        >>> net = EMCADNet(num_classes=4, encoder="pvt_v2_b0", encoder_weights="random").eval()
        >>> net(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 4, 64, 64])
    """

    torchscript_obstacle = (
        "its multi-scale convolution block sums a generator expression and its decoder stages index module lists "
        "by a run-time stage number (fuse, refine), neither of which TorchScript compiles"
    )

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 9,
        deep_supervision: bool = True,
        encoder: str = "pvt_v2_b2",
        encoder_weights: str | None = None,
        drop_path_rate: float = 0.1,
        kernel_sizes: Sequence[int] = (1, 3, 5),
        expansion_factor: int = 2,
        lgag_kernel_size: int = 3,
        activation: ActivationKind = "relu6",
        gate_activation: ActivationKind = "relu6",
        gray_stem: GrayStem = "conv",
        skip_connections: bool = True,
    ):
        super().__init__()
        if gray_stem not in ("conv", "repeat"):
            raise ValueError(f"unknown gray_stem {gray_stem!r}; expected 'conv' or 'repeat'")
        self.in_channels, self.num_classes, self.deep_supervision = in_channels, num_classes, deep_supervision
        self.gray_stem = gray_stem if in_channels == 1 else None
        if self.gray_stem == "conv":
            self.stem = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.ReLU())
        self.backbone = create_pvt_v2(encoder, 3 if in_channels == 1 else in_channels, drop_path_rate)
        load_encoder_weights(self.backbone, encoder_weights)
        encoder_channels = tuple(info["num_chs"] for info in self.backbone.feature_info)
        self.decoder = EMCADDecoder(
            encoder_channels[::-1],
            kernel_sizes,
            expansion_factor,
            lgag_kernel_size,
            activation,
            gate_activation,
            skip_connections,
        )
        self.head = nn.Conv2d(encoder_channels[0], num_classes, 1)
        if deep_supervision:
            self.aux_heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in encoder_channels[:0:-1])
        self.history_channels = (*encoder_channels, encoder_channels[-1])
        self.stage_channels = encoder_channels[-2::-1]

    def _forward(self, x: torch.Tensor, auxiliary: bool) -> list[torch.Tensor]:
        features = self.encode(x)
        return self.predict(x, features, self.decoder(features), auxiliary)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Checked image ``[B, in, H, W]`` -> encoder outputs ``[x1, x2, x3, x4]`` at 1/4 .. 1/32."""
        check_image_batch(x, self.in_channels)
        if self.gray_stem == "conv":
            x = self.stem(x)
        elif self.gray_stem == "repeat":
            x = x.expand(-1, 3, -1, -1)
        return pvt_v2_features(self.backbone, x)

    def bottleneck(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decoder outputs before the first fusing stage: ``[d4]``."""
        return [self.decoder.bottleneck(features[-1])]

    def fuse(self, stage: int, previous: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """Input of fusing stage ``stage`` (0 = 1/16 .. 2 = 1/4) from the previous decoder output."""
        return self.decoder.fuse(stage, previous, features[-2 - stage])

    def refine(self, stage: int, h: torch.Tensor) -> torch.Tensor:
        """Output of fusing stage ``stage`` from its input ``h`` (same shape)."""
        return self.decoder.refine(stage, h)

    def predict(
        self, x: torch.Tensor, features: list[torch.Tensor], decoded: list[torch.Tensor], auxiliary: bool
    ) -> list[torch.Tensor]:
        """Heads on ``decoded = [d4, d3, d2, d1]``, upsampled to the size of ``x``: coarse to fine, or ``[out1]``."""
        pairs = [*zip(self.aux_heads, decoded[:-1])] if auxiliary else []
        pairs.append((self.head, decoded[-1]))
        size = x.shape[-2:]
        return [F.interpolate(head(d), size=size, mode="bilinear", align_corners=False) for head, d in pairs]


register_network(
    EMCADNet,
    "pvt_emcad",
    encoder="pvt_v2",
    encoder_weights_file=PVT_V2_B2_WEIGHTS,
    deep_supervision=True,
    citations=(*PVT_DECODER_CITATIONS, EMCAD_CITATION),
    paper_model="PVT-EMCAD-B2",
)
