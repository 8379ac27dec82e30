"""PVT-GDLA and its baseline decoders (linear, rotary softmax and differential attention) on a PVT-v2 encoder.

Reference: Zheng et al., "Gated Differential Linear Attention: A Linear-Time Decoder for High-Fidelity
Medical Segmentation". Defaults reproduce the authors' published code and weights; the paper's ablations
are constructor options. Module names follow the authors' checkpoints (``up1.up``, ``de1.attn.qkvg``, ...)
except the encoder, which is timm's PVT-v2 under ``backbone`` (see :mod:`common.networks.convert`).

Shapes: input ``[B, in_channels, H, W]`` with H and W divisible by 32; output ``[B, num_classes, H, W]``,
or in training with deep supervision the list ``[out4, out3, out2, out1]`` of such maps.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import elu_feature_map, linear_attention
from .base import DeepSupervisionForward, check_image_batch
from .blocks import FFNKind, ResBlock, build_ffn
from .encoders import create_pvt_v2, load_encoder_weights, pvt_v2_features
from .layers import RMSNorm, apply_rotary, grid_to_tokens, pointwise, rotary_tables, tokens_to_grid
from .papers import PVT_DECODER_CITATIONS, PVT_V2_B2_WEIGHTS
from .registry import register_network
from .scripting import ScriptedByTracing

MixerKind = Literal["gdla", "linear", "softmax", "differential"]
GateKind = Literal["sigmoid", "silu"]

HEAD_DIM = 32
LAYER_NORM_EPS = 1e-5
RMS_NORM_EPS = 1e-5
LINEAR_ATTENTION_EPS = 1e-6


class GatedDifferentialLinearAttention(nn.Module):
    """GDLA mixer on tokens ``[B, N, C] -> [B, N, C]``.

    ``P = qkvg(x)`` is split into q, k, v, g. With ``local_mixing`` a second projection
    ``P' = pwc(dwc(P))`` on the token grid gives a second full pass; both passes run as one batched
    contraction. Per head, with ``differential``, the 32 query/key channels split into two 16-channel
    subspaces and ``y = LA(q1, k1, v) - lambda * LA(q2, k2, v)`` (lambda learnable per head and value
    channel); then one shared RMSNorm over the head channels and the element-wise gate ``y * gate(g)``.
    ``out_proj`` fuses ``[y_main, y_local]``.

    Args:
        dim: channels C (a multiple of ``head_dim``).
        num_heads: heads; ``num_heads * head_dim == dim``.
        differential: subtract the second subspace's attention (off: one 32-channel linear attention).
        local_mixing: add the depthwise/pointwise local token-mixing pass.
        gate: ``"sigmoid"`` (published code), ``"silu"`` (the paper's text) or ``None`` (no g projection).
        kernel_size: kernel of the local mixer's depthwise convolution.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        differential: bool = True,
        local_mixing: bool = True,
        gate: GateKind | None = "sigmoid",
        kernel_size: int = 3,
        head_dim: int = HEAD_DIM,
    ):
        super().__init__()
        if num_heads * head_dim != dim:
            raise ValueError(f"{num_heads} heads of {head_dim} channels do not make {dim} channels")
        if gate not in ("sigmoid", "silu", None):
            raise ValueError(f"unknown gate {gate!r}; expected 'sigmoid', 'silu' or None")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.differential, self.gate = differential, gate
        num_passes = 2 if local_mixing else 1
        projected = (4 if gate else 3) * dim
        if differential:
            self.lambda_scale_main = nn.Parameter(torch.randn(num_heads, head_dim) * 0.1)
            if local_mixing:
                self.lambda_scale_aux = nn.Parameter(torch.randn(num_heads, head_dim) * 0.1)
        self.qkvg = nn.Linear(dim, projected)
        self.ln = RMSNorm(head_dim, eps=RMS_NORM_EPS)
        if local_mixing:
            self.dwc = nn.Conv2d(projected, projected, kernel_size, padding=kernel_size // 2, groups=projected)
            self.pwc = nn.Conv2d(projected, projected, 1)
        else:
            self.dwc = self.pwc = None
        self.out_proj = nn.Linear(num_passes * dim, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, _ = x.shape
        y = self._gated_heads(self._projections(x, size))  # [S, B, N, H, D]
        return self.out_proj(y.permute(1, 2, 0, 3, 4).reshape(b, n, -1))

    def _projections(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``[S, B, N, 4C]``: ``qkvg(x)`` and, with local mixing, its depthwise/pointwise pass (held only stacked)."""
        projection = self.qkvg(x)  # [B, N, 4C]
        if self.dwc is None:
            return projection[None]
        return torch.stack((projection, grid_to_tokens(self.pwc(self.dwc(tokens_to_grid(projection, size))))))

    def _lambdas(self) -> torch.Tensor:
        """``[S, H, D]``: the subtraction weights of the main and (if present) local pass."""
        if self.dwc is None:
            return self.lambda_scale_main[None]
        return torch.stack((self.lambda_scale_main, self.lambda_scale_aux))

    def _gated_heads(self, projections: torch.Tensor) -> torch.Tensor:
        """``[S, B, N, 4C]`` projections of S passes -> gated, normalised head outputs ``[S, B, N, H, D]``."""
        s, b, n, _ = projections.shape
        h, d = self.num_heads, self.head_dim
        q, k, v, *g = projections.split(self.dim, dim=-1)
        y = self.ln(self._head_attention(q, k, v)).transpose(2, 3)  # [S, B, N, H, D]
        if self.gate:
            gate = g[0].reshape(s, b, n, h, d)
            y = y * (torch.sigmoid(gate) if self.gate == "sigmoid" else F.silu(gate))
        return y

    def _head_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v ``[S, B, N, C]`` -> per-head (differential) linear attention ``[S, B, H, N, D]``.

        The feature maps live only as arguments of the contraction and both subspaces' outputs only inside this
        call, so neither is held through the subtraction, norm and gate (docs/benchmarks.md, "Volume memory").
        """
        s, b, n, _ = q.shape
        h, d = self.num_heads, self.head_dim

        def heads(t: torch.Tensor) -> torch.Tensor:  # [S, B, N, C] -> [S, B, H, N, D]
            return t.reshape(s, b, n, h, d).transpose(2, 3)

        def features(t: torch.Tensor) -> torch.Tensor:  # [S, B, N, C] -> phi(t) as heads [S, B, H, N, D]
            return heads(elu_feature_map(t))

        def subspaces(t: torch.Tensor) -> torch.Tensor:  # [S, B, H, N, D] -> [S, B, H, 2, N, D/2]: halves of D
            return t.unflatten(-1, (2, d // 2)).transpose(-3, -2)

        if not self.differential:
            return linear_attention(features(q), features(k), heads(v), LINEAR_ATTENTION_EPS)
        both = linear_attention(
            subspaces(features(q)), subspaces(features(k)), heads(v).unsqueeze(3), LINEAR_ATTENTION_EPS
        )  # [S, B, H, 2, N, D]
        lam = self._lambdas()[:, None, :, None, :]  # [S, 1, H, 1, D]
        return both[:, :, :, 0] - lam * both[:, :, :, 1]


class _MultiHeadAttention(nn.Module):
    """qkv projection -> heads ``[B, H, N, D]`` -> :meth:`attend` -> output projection, ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Heads ``[B, H, N, D]`` of queries, keys and values -> ``[B, H, N, D]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # [B, H, N, D]
        return self.out_proj(self.attend(q, k, v).transpose(1, 2).reshape(b, n, c))


class LinearAttention(_MultiHeadAttention):
    """Multi-head kernel linear attention (phi = ELU + 1), ``[B, N, C] -> [B, N, C]``; no positional encoding."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return linear_attention(elu_feature_map(q), elu_feature_map(k), v, LINEAR_ATTENTION_EPS)


class RotarySelfAttention(_MultiHeadAttention):
    """Softmax attention with 1-D rotary embedding over the flattened token index, ``[B, N, C] -> [B, N, C]``."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cos, sin = rotary_tables(q.shape[-2], q.shape[-1], device=q.device, dtype=q.dtype)
        return F.scaled_dot_product_attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v)


class DifferentialAttention(nn.Module):
    """Differential Transformer attention, ``[B, N, C] -> [B, N, C]``.

    q and k form 2H heads of D/2 channels (rotary embedding on each), v forms H heads of D channels;
    value head h pairs with q/k heads 2h and 2h+1: ``(A1 - lambda A2) v``, RMSNorm, times ``1 - lambda_init``,
    with ``lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init`` and
    ``lambda_init = 0.8 - 0.6 exp(-0.3 depth)``.
    """

    def __init__(self, dim: int, num_heads: int, depth: int, head_dim: int = HEAD_DIM):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * depth)
        self.lambda_q1 = nn.Parameter(torch.randn(head_dim) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(head_dim) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(head_dim) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(head_dim) * 0.1)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.subln = RMSNorm(head_dim, eps=RMS_NORM_EPS)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).split(c, dim=-1)
        q = q.reshape(b, n, h, 2, d // 2).permute(0, 2, 3, 1, 4)  # [B, H, 2, N, D/2]
        k = k.reshape(b, n, h, 2, d // 2).permute(0, 2, 3, 1, 4)
        v = v.reshape(b, n, h, 1, d).permute(0, 2, 3, 1, 4).expand(b, h, 2, n, d)
        cos, sin = rotary_tables(n, d // 2, device=x.device, dtype=x.dtype)
        # the two attention maps as 2H heads of one 4-D call ([B, 2H, N, .]; ONNX exporters take 4-D inputs only)
        both = F.scaled_dot_product_attention(
            apply_rotary(q, cos, sin).reshape(b, 2 * h, n, d // 2),
            apply_rotary(k, cos, sin).reshape(b, 2 * h, n, d // 2),
            v.reshape(b, 2 * h, n, d),
        ).reshape(b, h, 2, n, d)
        lam = (
            torch.exp((self.lambda_q1 * self.lambda_k1).sum())
            - torch.exp((self.lambda_q2 * self.lambda_k2).sum())
            + self.lambda_init
        )
        y = self.subln(both[:, :, 0] - lam * both[:, :, 1]) * (1 - self.lambda_init)  # [B, H, N, D]
        return self.out_proj(y.transpose(1, 2).reshape(b, n, c))


class DecoderBlock(nn.Module):
    """``x + mixer(norm1(x))``, then ``x + mlp(norm2(x))`` on tokens ``[B, N, C]``.

    For GDLA the mixer input first passes the full Conv3x3 + SiLU (``dwc``; the paper calls it depthwise,
    the published parameter count needs a full convolution).
    """

    def __init__(self, dim: int, attn: nn.Module, mlp: nn.Module, input_conv: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1) if input_conv else None
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h = self.norm1(x)
        if self.dwc is not None:
            h = grid_to_tokens(F.silu(self.dwc(tokens_to_grid(h, size))))
        x = x + self.attn(h, size)
        return x + self.mlp(self.norm2(x), size)


class UpConv(nn.Module):
    """Transposed-convolution x2 upsampling ``[B, C_in, H, W] -> [B, C_out, 2H, 2W]`` (no bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.up = nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2, output_padding=1, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def build_mixer(
    kind: MixerKind,
    dim: int,
    depth: int,
    differential: bool = True,
    local_mixing: bool = True,
    gate: GateKind | None = "sigmoid",
    mixer_kernel_size: int = 3,
) -> nn.Module:
    """The token mixer ``kind`` for ``dim`` channels; ``depth`` (3, 2, 1 from coarse to fine) sets lambda_init.

    The keyword arguments are the GDLA ablations (PVT-GDLA's options); their defaults are the authors' model.
    """
    heads = dim // HEAD_DIM
    if kind == "gdla":
        return GatedDifferentialLinearAttention(dim, heads, differential, local_mixing, gate, mixer_kernel_size)
    if kind == "linear":
        return LinearAttention(dim, heads)
    if kind == "softmax":
        return RotarySelfAttention(dim, heads)
    if kind == "differential":
        return DifferentialAttention(dim, heads, depth)
    raise ValueError(f"unknown mixer {kind!r}; expected 'gdla', 'linear', 'softmax' or 'differential'")


class PVTDecoderNet(DeepSupervisionForward, ScriptedByTracing):
    """PVT-v2 encoder + three-stage transformer decoder + full-resolution residual branch.

    ``d3 = de1(up1(x4) + x3)``, ``d2 = de2(up2(d3) + x2)``, ``d1 = de3(up3(d2) + x1)``;
    ``out1 = head1(bilinear_x4(d1) + resblk(x))``. Deep supervision adds ``head4(x4)``, ``head3(d3)``,
    ``head2(d2)``, bilinearly upsampled to the input size.

    In eval mode, with ``fast_eval_head`` (default), ``out1`` is computed as the same map in a cheaper order:
    ``bilinear(W d1) + W resblk(x) + b`` (``W, b``: head1's weight and bias; bilinear weights sum to one) with the
    residual branch's batch norms folded (:meth:`ResBlock.folded`) and head1 as a matrix product on channels-last
    tokens. Only one C1-channel map exists at full resolution, and no norm or sum pass runs over it. Training,
    and counting the paper's MACs module by module (:func:`common.networks.complexity.paper_macs`), use the formula as written.

    Args:
        mixer: token mixer of every decoder block.
        in_channels: image channels; 1 is repeated to 3 for the encoder, the residual branch sees it raw.
        num_classes: output channels K.
        deep_supervision: build the three auxiliary heads; ``forward`` returns all four maps in training.
        ffn: decoder FFN (``mixffn``, ``swiglu`` or ``mlp``).
        up_kernel_size: transposed-convolution kernel (3, 5 or 7).
        encoder: timm PVT-v2 variant, ``pvt_v2_b0`` .. ``pvt_v2_b5``.
        encoder_weights: ImageNet weights file; ``None`` warns that the encoder is random, ``"random"`` does not.
        drop_path_rate: encoder stochastic depth.
        mixer_options: GDLA ablations (``differential``, ``local_mixing``, ``gate``, ``mixer_kernel_size``).

    Examples::

        >>> import torch
        >>> net = PVTDecoderNet("gdla", num_classes=4, encoder="pvt_v2_b0", encoder_weights="random").eval()
        >>> net(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 4, 64, 64])
        >>> [out.shape[1] for out in net.forward_all(torch.zeros(1, 1, 64, 64))]
        [4, 4, 4, 4]
    """

    torchscript_obstacle = (
        "its attention mixers unpack tensors and shapes of unknown length (q, k, v, *g = ...), define nested "
        "functions and call helpers with untyped arguments, and its decoder stages pick modules from tuples by a "
        "run-time stage number (fuse, refine): TorchScript compiles none of these"
    )

    def __init__(
        self,
        mixer: MixerKind,
        in_channels: int = 1,
        num_classes: int = 9,
        deep_supervision: bool = True,
        ffn: FFNKind = "mlp",
        up_kernel_size: int = 3,
        encoder: str = "pvt_v2_b2",
        encoder_weights: str | None = None,
        drop_path_rate: float = 0.1,
        **mixer_options,
    ):
        super().__init__()
        if mixer != "gdla" and mixer_options:
            raise ValueError(f"the {mixer!r} mixer has no options; got {sorted(mixer_options)}")
        if up_kernel_size % 2 != 1:
            raise ValueError(f"up_kernel_size must be odd, got {up_kernel_size}")
        self.in_channels, self.num_classes, self.deep_supervision = in_channels, num_classes, deep_supervision
        self.backbone = create_pvt_v2(encoder, 3 if in_channels == 1 else in_channels, drop_path_rate)
        load_encoder_weights(self.backbone, encoder_weights)
        c1, c2, c3, c4 = (info["num_chs"] for info in self.backbone.feature_info)

        def block(dim: int, depth: int) -> DecoderBlock:
            attn = build_mixer(mixer, dim, depth, **mixer_options)
            return DecoderBlock(dim, attn, build_ffn(ffn, dim), input_conv=mixer == "gdla")

        self.up1, self.de1 = UpConv(c4, c3, up_kernel_size), block(c3, 3)
        self.up2, self.de2 = UpConv(c3, c2, up_kernel_size), block(c2, 2)
        self.up3, self.de3 = UpConv(c2, c1, up_kernel_size), block(c1, 1)
        self.resblk = ResBlock(in_channels, c1)
        self.head1 = nn.Conv2d(c1, num_classes, 1)
        self.fast_eval_head = True
        if deep_supervision:
            self.head2 = nn.Conv2d(c2, num_classes, 1)
            self.head3 = nn.Conv2d(c3, num_classes, 1)
            self.head4 = nn.Conv2d(c4, num_classes, 1)

    @staticmethod
    def _decode(block: DecoderBlock, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        return tokens_to_grid(block(grid_to_tokens(x), size), size)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Checked input ``[B, in, H, W]`` -> the four encoder stage outputs ``[x1, x2, x3, x4]``."""
        check_image_batch(x, self.in_channels)
        return pvt_v2_features(self.backbone, x.expand(-1, 3, -1, -1) if self.in_channels == 1 else x)

    def fuse(self, stage: int, previous: torch.Tensor, features: list[torch.Tensor], skip: bool = True) -> torch.Tensor:
        """Decoder stage ``stage`` (0: 1/16, 1: 1/8, 2: 1/4) input: ``up(previous)`` plus the encoder skip."""
        up = (self.up1, self.up2, self.up3)[stage](previous)
        return up + features[-2 - stage] if skip else up

    def refine(self, stage: int, h: torch.Tensor) -> torch.Tensor:
        """Decoder block ``stage`` on its fused input ``[B, C, h, w]``."""
        return self._decode((self.de1, self.de2, self.de3)[stage], h)

    def predict(
        self, x: torch.Tensor, features: list[torch.Tensor], decoded: list[torch.Tensor], auxiliary: bool
    ) -> list[torch.Tensor]:
        """Heads on the decoded maps ``[d3, d2, d1]`` (plus the residual branch on ``x``), at the input size."""
        size = x.shape[-2:]

        def full_size(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

        if self.training or not self.fast_eval_head:
            out1 = self.head1(full_size(decoded[-1]) + self.resblk(x))
        else:
            weight, bias = self.head1.weight, self.head1.bias
            out1 = full_size(pointwise(decoded[-1], weight)) + pointwise(self.resblk.folded(x), weight, bias)
        if not auxiliary:
            return [out1]
        aux = ((self.head4, features[-1]), (self.head3, decoded[0]), (self.head2, decoded[1]))
        return [*(full_size(head(f)) for head, f in aux), out1]

    def _forward(self, x: torch.Tensor, auxiliary: bool) -> list[torch.Tensor]:
        features = self.encode(x)
        decoded, h = [], features[-1]
        for stage in range(3):
            h = self.refine(stage, self.fuse(stage, h, features))
            decoded.append(h)
        return self.predict(x, features, decoded, auxiliary)


#: the facts every PVT decoder network shares (its encoder, weights file, deep-supervision heads and papers)
PVT_DECODER_FACTS = dict(
    encoder="pvt_v2", encoder_weights_file=PVT_V2_B2_WEIGHTS, deep_supervision=True, citations=PVT_DECODER_CITATIONS
)

# The paper's four decoders: one class, the mixer fixed. PVT-GDLA's options add the GDLA ablations of
# build_mixer (its defaults are the authors' published model) and its FFN is the gated Mix-FFN; the baselines'
# mixers have no options; PVT-DiffAttn's FFN is SwiGLU, as in the Differential Transformer.
register_network(
    PVTDecoderNet,
    "pvt_gdla",
    fixed={"mixer": "gdla"},
    defaults={"ffn": "mixffn"},
    options_to=(build_mixer,),
    paper_model="PVT-GDLA",
    **PVT_DECODER_FACTS,
)
register_network(
    PVTDecoderNet,
    "pvt_linearattn",
    fixed={"mixer": "linear"},
    options_to=(),
    paper_model="PVT-LinearAttn",
    **PVT_DECODER_FACTS,
)
register_network(
    PVTDecoderNet,
    "pvt_selfattn",
    fixed={"mixer": "softmax"},
    options_to=(),
    paper_model="PVT-SelfAttn",
    **PVT_DECODER_FACTS,
)
register_network(
    PVTDecoderNet,
    "pvt_diffattn",
    fixed={"mixer": "differential"},
    defaults={"ffn": "swiglu"},
    options_to=(),
    paper_model="PVT-DiffAttn",
    **PVT_DECODER_FACTS,
)
