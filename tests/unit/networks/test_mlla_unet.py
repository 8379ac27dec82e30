"""MLLA-UNet: the rotary linear attention against its explicit N x N form, the 2-D rotary tables, the network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.networks import create_network
from common.networks.attention import elu_feature_map
from common.networks.layers import apply_rotary
from common.networks.mlla_unet import (
    MambaLikeLinearAttention,
    MLLAUNet,
    rotary_linear_attention,
    rotary_tables_2d,
)

torch.manual_seed(0)

SMALL = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), decoder_depths=(1, 1, 1))


def explicit_mlla(q, k, v, q_rot, k_rot, eps=1e-6):
    """MLLA attention through the N x N maps: rotated scores in the numerator, unrotated in the normaliser."""
    n = q.shape[-2]
    numerator = (q_rot @ k_rot.transpose(-2, -1)) @ v / n
    normaliser = (q @ k.transpose(-2, -1)).mean(dim=-1, keepdim=True) + eps
    return numerator / normaliser


def test_rotary_tables_2d_turn_pairs_by_row_then_column():
    height, width, dim = 3, 5, 16
    cos, sin = rotary_tables_2d((height, width), dim)
    k_max = dim // 4
    theta = 10000.0 ** (-torch.arange(k_max, dtype=torch.float64) / k_max)
    for row in range(height):
        for col in range(width):
            angles = torch.cat((row * theta, col * theta))
            n = row * width + col
            torch.testing.assert_close(cos[n].double(), angles.cos(), atol=1e-6, rtol=0)
            torch.testing.assert_close(sin[n].double(), angles.sin(), atol=1e-6, rtol=0)


def test_rotated_scores_depend_only_on_the_2d_offset():
    dim, size = 16, (6, 6)
    cos, sin = rotary_tables_2d(size, dim)
    q, k = torch.randn(dim), torch.randn(dim)

    def score(a: tuple[int, int], b: tuple[int, int]) -> torch.Tensor:
        i, j = a[0] * size[1] + a[1], b[0] * size[1] + b[1]
        return apply_rotary(q, cos[i], sin[i]) @ apply_rotary(k, cos[j], sin[j])

    torch.testing.assert_close(score((1, 2), (3, 1)), score((2, 4), (4, 3)), atol=1e-5, rtol=0)
    assert not torch.allclose(score((1, 2), (3, 1)), score((1, 2), (1, 3)), atol=1e-3)


def test_rotary_linear_attention_equals_explicit_form():
    size, dim = (4, 6), 16
    n = size[0] * size[1]
    q = elu_feature_map(torch.randn(2, 3, n, dim, dtype=torch.float64))
    k = elu_feature_map(torch.randn(2, 3, n, dim, dtype=torch.float64))
    v = torch.randn(2, 3, n, 8, dtype=torch.float64)
    cos, sin = rotary_tables_2d(size, dim, dtype=torch.float64)
    expected = explicit_mlla(q, k, v, apply_rotary(q, cos, sin), apply_rotary(k, cos, sin))
    torch.testing.assert_close(rotary_linear_attention(q, k, v, cos, sin).double(), expected, atol=1e-5, rtol=1e-5)


def test_attention_module_matches_explicit_form_from_its_weights():
    size, dim, num_heads = (4, 4), 64, 2
    attn = MambaLikeLinearAttention(dim, num_heads)
    x = torch.randn(2, size[0] * size[1], dim)
    with torch.no_grad():
        q, k = elu_feature_map(attn.qk(x)).chunk(2, dim=-1)
        cos, sin = rotary_tables_2d(size, dim)
        q_rot, k_rot = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # rotate all C channels, then split

        def heads(t):
            return t.reshape(2, -1, num_heads, dim // num_heads).transpose(1, 2)

        y = explicit_mlla(heads(q), heads(k), heads(x), heads(q_rot), heads(k_rot))
        grid = x.transpose(1, 2).reshape(2, dim, *size)
        lepe = F.conv2d(grid, attn.lepe.weight, attn.lepe.bias, padding=1, groups=dim)
        expected = y.transpose(1, 2).reshape(2, -1, dim) + lepe.flatten(2).transpose(1, 2)
        torch.testing.assert_close(attn(x, size), expected, atol=1e-5, rtol=1e-5)


def test_full_configuration_has_the_published_parameter_count():
    model = create_network("mlla_unet", in_channels=1, num_classes=9)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 1e6 - 28.5) < 0.05
    assert model.stem.conv1[0].in_channels == 3  # one channel is repeated to three
    assert [len(stage.blocks) for stage in model.encoder] == [2, 4, 8, 4]
    assert [stage.blocks[0].attn.num_heads for stage in model.decoder] == [8, 4, 2]


def test_forward_shape_and_gradients_on_a_non_square_input():
    model = MLLAUNet(in_channels=1, num_classes=4, drop_path_rate=0.0, **SMALL)
    x = torch.randn(2, 1, 32, 64)
    out = model(x)
    assert out.shape == (2, 4, 32, 64)
    out.square().mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["stem.conv1.0.weight"].abs().sum() > 0
    assert grads["encoder.3.blocks.0.attn.qk.weight"].abs().sum() > 0


def test_three_channel_input_is_used_as_given():
    model = MLLAUNet(in_channels=3, num_classes=2, **SMALL).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("shape", [(1, 1, 48, 64), (1, 3, 64, 64), (1, 64, 64)])
def test_bad_input_is_refused(shape):
    model = MLLAUNet(in_channels=1, num_classes=2, **SMALL)
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(*shape))


def test_deep_supervision_is_refused():
    with pytest.raises(ValueError, match="no deep supervision"):
        create_network("mlla_unet", in_channels=1, num_classes=9, deep_supervision=True)


@pytest.mark.slow
def test_full_configuration_macs_at_224():
    ptflops = pytest.importorskip("ptflops")
    model = create_network("mlla_unet", in_channels=1, num_classes=9).eval()
    macs, params = ptflops.get_model_complexity_info(model, (1, 224, 224), as_strings=False, print_per_layer_stat=False)
    assert abs(macs / 1e9 - 6.0) < 0.1
    assert params == sum(p.numel() for p in model.parameters())
