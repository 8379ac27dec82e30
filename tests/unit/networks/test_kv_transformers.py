"""KV attention (QKV, KV, KV+Pos) and the SETR, TransUNet and CvT networks built with it."""

from __future__ import annotations

import math

import pytest
import torch

from common.networks import create_network
from common.networks.kv_transformers import (
    ConvProjectionAttention,
    KeyValueAttention,
    pair_encoding,
)

torch.manual_seed(0)

DIM, HEADS, TOKENS = 32, 4, 12
SIZE = (3, 4)

SMALL = {
    "setr": dict(image_size=32, embed_dim=32, depth=2, num_heads=2, head_channels=16),
    "transunet": dict(image_size=32, embed_dim=32, depth=2, num_heads=2, decoder_channels=(32, 16, 16, 8)),
    "cvt": dict(embed_dims=(16, 32, 64), depths=(1, 1, 2), num_heads=(1, 2, 2), decoder_channels=(32, 16, 16, 8)),
}


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def values_of(attn: KeyValueAttention, x: torch.Tensor) -> torch.Tensor:
    """The value heads ``[B, heads, M, D]`` of ``attn`` for ``x``, from its weights."""
    v = attn.key_value(x)[..., x.shape[-1] :]
    return v.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)


def set_pair_logit(attn: KeyValueAttention, a: float, w: torch.Tensor, b: float) -> None:
    with torch.no_grad():
        attn.pair_logit.weight[0, 0] = a
        attn.pair_logit.weight[0, 1:] = w
        attn.pair_logit.bias.fill_(b)


def kv_pair(qkv_bias: bool = False) -> tuple[KeyValueAttention, KeyValueAttention]:
    """A KV and a KV+Pos attention with the same K/V and output weights."""
    kv = KeyValueAttention(DIM, HEADS, "kv", qkv_bias=qkv_bias)
    kv_pos = KeyValueAttention(DIM, HEADS, "kv_pos", qkv_bias=qkv_bias)
    missing, unexpected = kv_pos.load_state_dict(kv.state_dict(), strict=False)
    assert sorted(missing) == ["pair_logit.bias", "pair_logit.weight"] and not unexpected
    return kv, kv_pos


def test_kv_logits_are_symmetric_and_qkv_logits_are_not():
    x = torch.randn(2, TOKENS, DIM)
    kv_logits = KeyValueAttention(DIM, HEADS, "kv").attention_logits(x)
    assert kv_logits.shape == (2, HEADS, TOKENS, TOKENS)
    torch.testing.assert_close(kv_logits, kv_logits.transpose(-2, -1))
    qkv_logits = KeyValueAttention(DIM, HEADS, "qkv").attention_logits(x)
    assert not torch.allclose(qkv_logits, qkv_logits.transpose(-2, -1), atol=1e-3)


@pytest.mark.parametrize("attention", ["qkv", "kv", "kv_pos"])
def test_forward_is_softmax_of_the_logits_times_values(attention):
    attn = KeyValueAttention(DIM, HEADS, attention)
    if attention == "kv_pos":
        set_pair_logit(attn, 0.7, torch.randn(attn.pair_channels), 0.3)
    x = torch.randn(2, TOKENS, DIM)
    with torch.no_grad():
        y = attn.attention_logits(x).softmax(dim=-1) @ values_of(attn, x)
        expected = attn.out_proj(y.transpose(1, 2).reshape(2, TOKENS, DIM))
        torch.testing.assert_close(attn(x, SIZE), expected, atol=1e-5, rtol=1e-5)


def test_kv_logits_are_scaled_key_products():
    attn = KeyValueAttention(DIM, HEADS, "kv")
    x = torch.randn(1, TOKENS, DIM)
    with torch.no_grad():
        k = attn.key_value(x)[..., :DIM].reshape(1, TOKENS, HEADS, -1).transpose(1, 2)
        expected = k @ k.transpose(-2, -1) / math.sqrt(DIM // HEADS)
        torch.testing.assert_close(attn.attention_logits(x), expected)


def test_kv_pos_with_unit_a_and_zero_w_b_equals_kv():
    kv, kv_pos = kv_pair()
    set_pair_logit(kv_pos, 1.0, torch.zeros(kv_pos.pair_channels), 0.0)
    x = torch.randn(2, TOKENS, DIM)
    with torch.no_grad():
        torch.testing.assert_close(kv_pos.attention_logits(x), kv.attention_logits(x), atol=0, rtol=0)
        torch.testing.assert_close(kv_pos(x, SIZE), kv(x, SIZE), atol=1e-6, rtol=1e-6)


def test_kv_pos_adds_w_dot_p_and_nothing_else():
    kv, kv_pos = kv_pair()
    w = torch.randn(kv_pos.pair_channels)
    set_pair_logit(kv_pos, 1.0, w, 0.0)
    x = torch.randn(2, TOKENS, DIM)
    with torch.no_grad():
        difference = kv_pos.attention_logits(x) - kv.attention_logits(x)  # [B, heads, N, N]
        position = pair_encoding(TOKENS, kv_pos.pair_channels) @ w  # [N, N]
        torch.testing.assert_close(difference, position.expand_as(difference), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(position, position.T, atol=1e-3)  # the positional term is asymmetric
        a, b = 0.5, -2.0
        set_pair_logit(kv_pos, a, w, b)
        torch.testing.assert_close(
            kv_pos.attention_logits(x), a * kv.attention_logits(x) + position + b, atol=1e-5, rtol=1e-5
        )


def test_pair_encoding_encodes_query_then_key_index():
    n, channels = 7, 12
    p = pair_encoding(n, channels)
    assert p.shape == (n, n, channels)
    i, j = torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n, dtype=torch.float32)[None, :]
    for k in range(channels // 4):
        frequency = 10000.0 ** (-4 * k / channels)
        torch.testing.assert_close(p[..., 2 * k], torch.sin(i * frequency).expand(n, n))
        torch.testing.assert_close(p[..., 2 * k + 1], torch.cos(i * frequency).expand(n, n))
        torch.testing.assert_close(p[..., channels // 2 + 2 * k], torch.sin(j * frequency).expand(n, n))
        torch.testing.assert_close(p[..., channels // 2 + 2 * k + 1], torch.cos(j * frequency).expand(n, n))


def test_kv_pos_refuses_long_sequences():
    attn = KeyValueAttention(DIM, HEADS, "kv_pos", max_pair_tokens=16)
    assert attn(torch.randn(1, 16, DIM), (4, 4)).shape == (1, 16, DIM)
    with pytest.raises(ValueError, match="over 20 tokens.*limit is 16 tokens"):
        attn(torch.randn(1, 20, DIM), (4, 5))
    with pytest.raises(ValueError, match="multiple of 4"):
        pair_encoding(5, 10)


@pytest.mark.parametrize("qkv_bias, saved", [(False, DIM * DIM), (True, DIM * DIM + DIM)])
def test_kv_saves_exactly_the_query_projection(qkv_bias, saved):
    qkv = KeyValueAttention(DIM, HEADS, "qkv", qkv_bias=qkv_bias)
    kv = KeyValueAttention(DIM, HEADS, "kv", qkv_bias=qkv_bias)
    assert num_params(qkv) - num_params(kv) == saved
    assert num_params(qkv) - num_params(kv) == num_params(qkv.query)


def test_kv_forms_take_no_separate_queries():
    with pytest.raises(ValueError, match="no query projection"):
        KeyValueAttention(DIM, HEADS, "kv")(torch.randn(1, 4, DIM), (2, 2), query_input=torch.randn(1, 4, DIM))
    with pytest.raises(ValueError, match="unknown attention"):
        KeyValueAttention(DIM, HEADS, "kqv")


def test_cvt_kv_attends_over_the_strided_tokens_and_returns_every_token():
    size = (8, 6)
    x = torch.randn(2, size[0] * size[1], DIM)
    kv = ConvProjectionAttention(DIM, HEADS, "kv").eval()
    logits = kv.attention_logits(x, size)
    assert logits.shape == (2, HEADS, 12, 12)  # the 4 x 3 strided keys on both sides
    torch.testing.assert_close(logits, logits.transpose(-2, -1))
    assert kv(x, size).shape == x.shape
    qkv = ConvProjectionAttention(DIM, HEADS, "qkv").eval()
    assert qkv.attention_logits(x, size).shape == (2, HEADS, 48, 12)  # unstrided queries, strided keys
    assert qkv(x, size).shape == x.shape
    query_path = DIM * DIM + 9 * DIM + 2 * DIM  # W_Q + depthwise 3x3 query projection + its BatchNorm
    assert num_params(qkv) - num_params(kv) == query_path


def test_cvt_kv_pos_uses_the_strided_sequence_length():
    attn = ConvProjectionAttention(DIM, HEADS, "kv_pos", max_pair_tokens=16).eval()
    assert attn(torch.randn(1, 64, DIM), (8, 8)).shape == (1, 64, DIM)  # 64 tokens, 16 strided
    with pytest.raises(ValueError, match="limit is 16 tokens"):
        attn(torch.randn(1, 100, DIM), (10, 10))


@pytest.mark.parametrize("name", ["setr", "transunet", "cvt"])
@pytest.mark.parametrize("attention", ["qkv", "kv", "kv_pos"])
def test_networks_forward_and_backward(name, attention):
    torch.manual_seed(0)  # no stochastic depth: a block dropped for the whole batch would get no gradient
    model = create_network(name, in_channels=1, num_classes=3, attention=attention, drop_path_rate=0.0, **SMALL[name])
    x = torch.randn(2, 1, 64, 48)  # not the position embedding's 32 x 32 grid: it is resized
    out = model(x)
    assert out.shape == (2, 3, 64, 48)
    out.sigmoid().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    attention_grads = [g for n, g in grads.items() if "key_value" in n]
    assert attention_grads and all(g.abs().sum() > 0 for g in attention_grads)


@pytest.mark.parametrize("name", ["setr", "transunet", "cvt"])
def test_networks_save_the_query_path_per_block(name):
    qkv = create_network(name, in_channels=1, num_classes=3, attention="qkv", **SMALL[name])
    kv = create_network(name, in_channels=1, num_classes=3, attention="kv", **SMALL[name])
    blocks = [m for m in qkv.modules() if isinstance(m, KeyValueAttention)]
    dims = [m.out_proj.in_features for m in blocks]
    per_block = (lambda d: d * d + 11 * d) if name == "cvt" else (lambda d: d * d)
    assert num_params(qkv) - num_params(kv) == sum(per_block(d) for d in dims)


def test_setr_kv_saves_the_query_projection_macs():
    ptflops = pytest.importorskip("ptflops")
    options = dict(in_channels=1, num_classes=3, **SMALL["setr"])

    def macs(attention: str) -> int:
        model = create_network("setr", attention=attention, **options).eval()
        return ptflops.get_model_complexity_info(model, (1, 32, 32), as_strings=False, print_per_layer_stat=False)[0]

    tokens, dim, depth = 4, SMALL["setr"]["embed_dim"], SMALL["setr"]["depth"]
    assert macs("qkv") - macs("kv") == depth * tokens * dim * dim


@pytest.mark.parametrize("name", ["setr", "transunet", "cvt"])
def test_networks_refuse_bad_input(name):
    model = create_network(name, in_channels=1, num_classes=3, **SMALL[name])
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 1, 40, 32))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no deep supervision"):
        create_network(name, in_channels=1, num_classes=3, deep_supervision=True)
