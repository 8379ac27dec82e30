"""XAttnRes: cross-stage attention residuals, a plug-in for encoder-decoder segmentation networks.

Reference: "XAttnRes: Cross-Stage Attention Residuals for Medical Image Segmentation" (arXiv 2604.03297),
which carries Attention Residuals (arXiv 2603.15031) from language-model layers to network stages.

A history pool holds the output of every encoder and decoder stage produced so far. Before each fusing
decoder stage s (the stages that receive a skip: 1/16, 1/8, 1/4; ``C_s`` channels at ``H_s x W_s``) the pool
entries and the stage's current input ``V_cur`` (the up-sampled previous decoder output, plus the skip when
the network keeps its skips) are aggregated per pixel::

    V_n     = Conv1x1_n(resize(entry_n, H_s x W_s))         # own projection per entry, no bias
    alpha_n = softmax_n(w_s . RMSNorm(V_n))                 # over the entries, at every pixel
    h_s     = sum_n alpha_n V_n                             # replaces the stage input (combine="replace")

and the stage output joins the pool. ``w_s`` (``query``) starts at zero, so training starts from a uniform
average of the entries. Choices where the paper is silent:

- The aggregation *replaces* the stage input, as in Attention Residuals; ``combine="add"`` adds it instead.
- Higher-resolution entries are resized bilinearly (``downsample="bilinear"``, the paper's word);
  ``downsample="area"`` averages whole cells (average pooling) instead of reading 2 of every 4 rows at a
  factor 4. Lower-resolution entries are always up-sampled bilinearly.
- The current input is a pool entry like the others, with its own projection; projections start from
  PyTorch's default initialisation.
- RMSNorm has no gain (it would be redundant with ``w_s``); eps 1e-6.
- A network's first decoder stage that fuses nothing (EMCAD's MSCAM on ``x4``) runs as in the baseline: its
  input is already in the pool; its output joins the pool.

The plug-in works through a small protocol, :class:`StagedEncoderDecoder`: :class:`~.emcad.EMCADNet`
implements it; :class:`PVTDecoderStages` provides it for the PVT-GDLA family without changing that network.
With ``skip_connections=False`` in the host, encoder stages reach the decoder only through the pool.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import emcad  # noqa: F401  (registers the pvt_emcad host)
from .papers import EMCAD_CITATION, PVT_DECODER_CITATIONS, PVT_V2_B2_WEIGHTS, XATTNRES_CITATION
from .pvt_decoders import PVTDecoderNet
from .registry import register_network
from .scripting import ScriptedByTracing

Downsample = Literal["bilinear", "area"]
Combine = Literal["replace", "add"]

RMS_NORM_EPS = 1e-6


@runtime_checkable
class StagedEncoderDecoder(Protocol):
    """An encoder-decoder seen as stages, which is what :class:`XAttnResNet` needs.

    ``encode`` gives the encoder outputs, ``bottleneck`` the decoder outputs computed before the first fusing
    stage (may be empty); then for each fusing stage ``s`` (coarse to fine) ``refine(s, fuse(s, previous,
    features))`` with ``previous`` the last output so far; ``predict`` makes the output maps. ``refine`` keeps
    the shape of its input.

    Attributes:
        in_channels: image channels.
        deep_supervision: whether ``predict`` can make the auxiliary maps.
        history_channels: channels of ``encode`` + ``bottleneck`` outputs, in that order.
        stage_channels: ``C_s`` of each fusing stage, coarse to fine.
    """

    in_channels: int
    deep_supervision: bool
    history_channels: tuple[int, ...]
    stage_channels: tuple[int, ...]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Checked image ``[B, in, H, W]`` -> encoder outputs, fine to coarse."""

    def bottleneck(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decoder outputs made before the first fusing stage."""

    def fuse(self, stage: int, previous: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """The regular input ``[B, C_s, H_s, W_s]`` of fusing stage ``stage``."""

    def refine(self, stage: int, h: torch.Tensor) -> torch.Tensor:
        """The output of fusing stage ``stage`` for input ``h`` (same shape)."""

    def predict(
        self, x: torch.Tensor, features: list[torch.Tensor], decoded: list[torch.Tensor], auxiliary: bool
    ) -> list[torch.Tensor]:
        """Output maps ``[B, K, H, W]`` from bottleneck + stage outputs ``decoded``: coarse to fine, or the last."""


class PVTDecoderStages:
    """The stage protocol over a :class:`~.pvt_decoders.PVTDecoderNet` (PVT-GDLA and its baselines).

    Calls the network's own modules and holds no parameters, so outputs and state dict are the network's.
    Fusing stages: ``up_i(previous) + skip`` into ``de_i`` at 1/16, 1/8, 1/4; no bottleneck stage.
    ``skip_connections=False`` drops the ``+ x3``, ``+ x2``, ``+ x1`` skips.
    """

    def __init__(self, network: PVTDecoderNet, skip_connections: bool = True):
        if not isinstance(network, PVTDecoderNet):
            raise TypeError(f"expected a PVTDecoderNet, got {type(network).__name__}")
        self.network, self.skip_connections = network, skip_connections
        self.history_channels = tuple(info["num_chs"] for info in network.backbone.feature_info)
        self.stage_channels = self.history_channels[-2::-1]

    @property
    def in_channels(self) -> int:
        return self.network.in_channels

    @property
    def deep_supervision(self) -> bool:
        return self.network.deep_supervision

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.network.encode(x)

    def bottleneck(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return []

    def fuse(self, stage: int, previous: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        return self.network.fuse(stage, previous, features, self.skip_connections)

    def refine(self, stage: int, h: torch.Tensor) -> torch.Tensor:
        return self.network.refine(stage, h)

    def predict(
        self, x: torch.Tensor, features: list[torch.Tensor], decoded: list[torch.Tensor], auxiliary: bool
    ) -> list[torch.Tensor]:
        return self.network.predict(x, features, decoded, auxiliary)


def resize(x: torch.Tensor, size: tuple[int, int], downsample: Downsample) -> torch.Tensor:
    """``[B, C, h, w] -> [B, C, *size]``: bilinear up-sampling; ``downsample`` mode for a smaller ``size``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = x.shape[-2] * x.shape[-1] > size[0] * size[1]
    if shrinking and downsample == "area":
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class CrossStageAggregation(nn.Module):
    """Pseudo-query attention over pool entries at one stage: ``n`` entries -> ``[B, C, H, W]`` and ``alpha``.

    Entry ``n`` (``[B, C_n, h_n, w_n]``, the last one being the stage's current input, whose size is the
    target ``H x W``) is resized and projected by its own Conv1x1 (C_n -> C, no bias). Conv1x1 and resizing
    commute, so the projection runs at the smaller of the two resolutions (same result, less work).

    Args:
        entry_channels: ``C_n`` of the entries, in pool order.
        channels: ``C``, the stage width.
        downsample: resizing of higher-resolution entries, ``"bilinear"`` or ``"area"``.
        combine: ``"replace"``: the stage input becomes the aggregation; ``"add"``: current input + aggregation.
    """

    def __init__(
        self,
        entry_channels: Sequence[int],
        channels: int,
        downsample: Downsample = "bilinear",
        combine: Combine = "replace",
    ):
        super().__init__()
        if downsample not in ("bilinear", "area"):
            raise ValueError(f"unknown downsample {downsample!r}; expected 'bilinear' or 'area'")
        if combine not in ("replace", "add"):
            raise ValueError(f"unknown combine {combine!r}; expected 'replace' or 'add'")
        self.downsample, self.combine = downsample, combine
        self.projections = nn.ModuleList(nn.Conv2d(c, channels, 1, bias=False) for c in entry_channels)
        self.query = nn.Parameter(torch.zeros(channels))

    def values(self, entries: Sequence[torch.Tensor]) -> torch.Tensor:
        """Aligned, projected entries ``V [B, n, C, H, W]`` at the size of the last entry."""
        if len(entries) != len(self.projections):
            raise ValueError(f"expected {len(self.projections)} pool entries, got {len(entries)}")
        size = tuple(entries[-1].shape[-2:])
        aligned = []
        for project, entry in zip(self.projections, entries):
            if entry.shape[-2] * entry.shape[-1] > size[0] * size[1]:
                aligned.append(project(resize(entry, size, self.downsample)))
            else:
                aligned.append(resize(project(entry), size, self.downsample))
        return torch.stack(aligned, dim=1)

    def forward(self, entries: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool entries (current input last) -> stage input ``[B, C, H, W]`` and weights ``alpha [B, n, H, W]``."""
        v = self.values(entries)
        inverse_rms = v.pow(2).mean(dim=2).add(RMS_NORM_EPS).rsqrt()  # [B, n, H, W]
        alpha = (torch.einsum("bnchw,c->bnhw", v, self.query) * inverse_rms).softmax(dim=1)
        aggregated = torch.einsum("bnhw,bnchw->bchw", alpha, v)
        return (aggregated + entries[-1] if self.combine == "add" else aggregated), alpha


class XAttnResNet(ScriptedByTracing, nn.Module):
    """A staged encoder-decoder with cross-stage attention residuals before each fusing decoder stage.

    Pool order at fusing stage s: encoder outputs (fine to coarse), bottleneck outputs, outputs of fusing
    stages ``0 .. s-1``, then the current input. Forward semantics are the host's: ``[B, K, H, W]``, or in
    training with deep supervision the host's list of maps, coarse to fine.

    Args:
        network: the host module (its parameters are this module's ``network.*``).
        stages: the host's stage view when ``network`` does not implement :class:`StagedEncoderDecoder`
            itself (e.g. :class:`PVTDecoderStages`), or a function making it from ``network``.
        downsample, combine: as :class:`CrossStageAggregation`.

    Examples::

        >>> import torch
        >>> from common.networks.emcad import EMCADNet
        >>> net = XAttnResNet(EMCADNet(num_classes=4, encoder="pvt_v2_b0", encoder_weights="random")).eval()
        >>> net(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 4, 64, 64])
    """

    torchscript_obstacle = (
        "its cross-stage aggregation calls the host network's stages by a run-time stage number (through a "
        "plain-Python adapter for PVT-GDLA hosts), and the host networks do not script either"
    )

    def __init__(
        self,
        network: nn.Module,
        stages: StagedEncoderDecoder | Callable[[nn.Module], StagedEncoderDecoder] | None = None,
        downsample: Downsample = "bilinear",
        combine: Combine = "replace",
    ):
        super().__init__()
        self.network = network
        self.adapter = stages(network) if callable(stages) else stages
        if not isinstance(self.stages, StagedEncoderDecoder):
            raise TypeError(
                f"{type(self.stages).__name__} does not implement StagedEncoderDecoder; "
                "pass a stage view such as PVTDecoderStages(network)"
            )
        entry_channels = list(self.stages.history_channels)
        self.aggregators = nn.ModuleList()
        for channels in self.stages.stage_channels:
            self.aggregators.append(CrossStageAggregation([*entry_channels, channels], channels, downsample, combine))
            entry_channels.append(channels)

    @property
    def stages(self) -> StagedEncoderDecoder:
        """The host seen as stages."""
        return self.network if self.adapter is None else self.adapter

    @property
    def in_channels(self) -> int:
        return self.stages.in_channels

    @property
    def deep_supervision(self) -> bool:
        return self.stages.deep_supervision

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``[B, in, H, W]`` -> ``[B, K, H, W]``; in training with deep supervision all maps, coarse to fine."""
        if self.training and self.deep_supervision:
            return self.forward_all(x)
        return self._forward(x, False)[0][-1]

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All outputs, coarse to fine (only the final map without deep supervision)."""
        return self._forward(x, self.deep_supervision)[0]

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Aggregation weights ``alpha [B, n_s, H_s, W_s]`` of each fusing stage, coarse to fine, in pool order."""
        return self._forward(x, False)[1]

    def _forward(self, x: torch.Tensor, auxiliary: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        stages = self.stages
        features = stages.encode(x)
        decoded = stages.bottleneck(features)
        history = [*features, *decoded]
        weights = []
        for stage, aggregate in enumerate(self.aggregators):
            h, alpha = aggregate([*history, stages.fuse(stage, history[-1], features)])
            history.append(stages.refine(stage, h))
            decoded.append(history[-1])
            weights.append(alpha)
        return stages.predict(x, features, decoded, auxiliary), weights


EMCAD_XATTNRES_FACTS = dict(
    encoder="pvt_v2",
    encoder_weights_file=PVT_V2_B2_WEIGHTS,
    deep_supervision=True,
    citations=(*PVT_DECODER_CITATIONS, EMCAD_CITATION, XATTNRES_CITATION),
)
GDLA_XATTNRES_FACTS = dict(
    encoder="pvt_v2",
    encoder_weights_file=PVT_V2_B2_WEIGHTS,
    deep_supervision=True,
    citations=(*PVT_DECODER_CITATIONS, XATTNRES_CITATION),
)

# XAttnRes around the registered hosts: the hosts' options, then downsample and combine. Without skips (_noskip)
# encoder stages reach the decoder only through the pool.
register_network(
    XAttnResNet,
    "pvt_emcad_xattnres",
    host="pvt_emcad",
    fixed={"stages": None},
    paper_model="PVT-EMCAD-B2 + XAttnRes",
    **EMCAD_XATTNRES_FACTS,
)
register_network(
    XAttnResNet,
    "pvt_emcad_xattnres_noskip",
    host="pvt_emcad",
    fixed={"stages": None, "skip_connections": False},
    **EMCAD_XATTNRES_FACTS,
)
register_network(
    XAttnResNet, "pvt_gdla_xattnres", host="pvt_gdla", fixed={"stages": PVTDecoderStages}, **GDLA_XATTNRES_FACTS
)
register_network(
    XAttnResNet,
    "pvt_gdla_xattnres_noskip",
    host="pvt_gdla",
    fixed={"stages": functools.partial(PVTDecoderStages, skip_connections=False)},
    **GDLA_XATTNRES_FACTS,
)
