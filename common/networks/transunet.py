"""TransUNet (ResNet-50 stages, a ViT on the 1/16 map, a cascaded up-sampler) with QKV, KV or KV+Pos attention."""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn as nn

from ..data.input_size import INPUT_SIZE
from .base import check_image_batch, refuse_deep_supervision
from .kv_transformers import AttentionKind, CascadedUpsampler, KeyValueAttention, TransformerEncoder
from .layers import grid_to_tokens, tokens_to_grid
from .papers import KV_ATTENTION_CITATION
from .registry import register_network
from .scripting import ScriptedByTracing


class TransUNet(ScriptedByTracing, nn.Module):
    """TransUNet: ResNet-50 stem and stages 1-3 (timm, random init), ViT on the 1/16 map, cascaded upsampler.

    The 1/16 features (1024 channels) are embedded by a Conv1x1 ("patch size 1"), pass a ViT encoder
    (default ViT-S: depth 12, width 384, 6 heads; TransUNet's ViT-B is heavy for 224 x 224 MRI from scratch), and
    return through the upsampler with the 1/8, 1/4 and 1/2 ResNet features as skips; decoder widths
    (256, 128, 64, 16) and a Conv3x3 head as TransUNet. The ResNet uses BatchNorm (TransUNet's R50 uses
    GroupNorm and weight standardisation for its BiT weights).

    Args: as :class:`SETR`, plus ``decoder_channels``; the input is used with ``in_channels`` as given.

    Examples::

        >>> import torch
        >>> net = TransUNet(num_classes=3, attention="kv", image_size=64, embed_dim=32, depth=2, num_heads=2).eval()
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
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: int = 4,
        drop_path_rate: float = 0.1,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        deep_supervision: bool = False,
        **attention_options,
    ):
        super().__init__()
        refuse_deep_supervision("transunet", deep_supervision)
        self.in_channels = in_channels
        self.cnn = timm.create_model(
            "resnet50", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3), in_chans=in_channels
        )
        c2, c4, c8, c16 = self.cnn.feature_info.channels()
        self.patch_embed = nn.Conv2d(c16, embed_dim, 1)
        grid = (image_size // 16, image_size // 16)
        self.script_example_size = image_size  # the position embedding fixes a trace to its size
        self.encoder = TransformerEncoder(
            embed_dim, depth, num_heads, grid, attention, mlp_ratio, drop_path_rate, **attention_options
        )
        self.decoder = CascadedUpsampler(embed_dim, (c8, c4, c2, 0), decoder_channels)
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in, H, W]`` -> logits ``[B, K, H, W]``."""
        check_image_batch(x, self.in_channels, 16)
        f2, f4, f8, f16 = self.cnn(x)
        x = self.patch_embed(f16)
        size = (x.shape[-2], x.shape[-1])
        x = tokens_to_grid(self.encoder(grid_to_tokens(x), size), size)
        return self.head(self.decoder(x, (f8, f4, f2, None)))


register_network(TransUNet, "transunet", options_to=(KeyValueAttention,), citations=(KV_ATTENTION_CITATION,))
