"""PVT-GDLA and its baselines: published sizes, shapes, gradients, ablation options, linear-attention maths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.networks import create_network, list_networks, pvt_decoders
from common.networks.attention import elu_feature_map, linear_attention
from common.networks.blocks import ResBlock
from common.networks.layers import RMSNorm, grid_to_tokens, tokens_to_grid


def linear_attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Reference: linear attention through the explicit ``[..., N, M]`` similarity map (quadratic in N)."""
    scores = q @ k.transpose(-2, -1)
    return (scores @ v) / (scores.sum(dim=-1, keepdim=True) + eps)


NAMES = ["pvt_gdla", "pvt_linearattn", "pvt_selfattn", "pvt_diffattn"]
DECODER_WIDTHS = (320, 128, 64)  # de1, de2, de3 of a PVT-v2-b2 encoder


def build(name: str = "pvt_gdla", **kwargs) -> torch.nn.Module:
    kwargs.setdefault("encoder_weights", "random")
    return create_network(name, **kwargs)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_registry_lists_the_family():
    assert set(NAMES) <= set(list_networks())
    with pytest.raises(ValueError, match="unknown network 'pvt_nope'.*pvt_gdla"):
        create_network("pvt_nope")


def test_gdla_parameter_count_matches_the_published_model():
    model = build(in_channels=1, num_classes=9, deep_supervision=True)
    assert n_params(model) == 32_134_607
    assert n_params(model.backbone) == 24_849_856
    assert [n_params(m) for m in (model.up1, model.up2, model.up3)] == [1_474_560, 368_640, 73_728]
    assert [n_params(m) for m in (model.de1, model.de2, model.de3)] == [4_449_312, 722_976, 185_376]
    assert n_params(model.resblk) == 907
    assert [n_params(m) for m in (model.head1, model.head2, model.head3, model.head4)] == [585, 1_161, 2_889, 4_617]


@pytest.mark.parametrize(
    "name, expected", [("pvt_linearattn", 28_258_159), ("pvt_selfattn", 28_258_159), ("pvt_diffattn", 28_751_695)]
)
def test_baseline_parameter_counts(name, expected):
    assert n_params(build(name)) == expected


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels, size", [(1, (224, 224)), (3, (256, 192))])
def test_output_shapes(name, in_channels, size):
    model = build(name, in_channels=in_channels, num_classes=4)
    x = torch.randn(2, in_channels, *size)
    model.eval()
    with torch.no_grad():
        out = model(x)
        every = model.forward_all(x)
    assert out.shape == (2, 4, *size)
    assert [tuple(o.shape) for o in every] == [(2, 4, *size)] * 4
    torch.testing.assert_close(every[-1], out)
    model.train()
    train_out = model(x[:1])
    assert isinstance(train_out, list) and len(train_out) == 4


def test_without_deep_supervision_there_are_no_auxiliary_heads():
    model = build(deep_supervision=False)
    assert not any(k.startswith(("head2", "head3", "head4")) for k in model.state_dict())
    assert n_params(build()) - n_params(model) == 1_161 + 2_889 + 4_617
    model.train()
    out = model(torch.randn(1, 1, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 9, 64, 64)


def test_input_that_is_not_a_multiple_of_32_is_refused():
    with pytest.raises(ValueError, match="divisible by 32.*\\(1, 1, 100, 96\\)"):
        build().eval()(torch.randn(1, 1, 100, 96))


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build(name, drop_path_rate=0.0)
    model.train()
    outputs = model(torch.randn(2, 1, 64, 96))
    sum(o.square().mean() for o in outputs).backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    zero = [k for k, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert zero == []


# ---------------------------------------------------------------- linear attention maths


def test_linear_attention_equals_its_explicit_form():
    torch.manual_seed(0)
    q, k = elu_feature_map(torch.randn(2, 3, 2, 50, 16)), elu_feature_map(torch.randn(2, 3, 2, 50, 16))
    v = torch.randn(2, 3, 1, 50, 32)  # broadcast over the two subspaces, as GDLA uses it
    torch.testing.assert_close(linear_attention(q, k, v), linear_attention_explicit(q, k, v), rtol=0, atol=1e-5)


def reference_gdla(attn: pvt_decoders.GatedDifferentialLinearAttention, x: torch.Tensor, size) -> torch.Tensor:
    """The spec's GDLA written out head by head with explicit N x N maps (independent of the batched code)."""
    b, n, c = x.shape
    p_main = attn.qkvg(x)
    grid = p_main.transpose(1, 2).reshape(b, -1, *size)
    p_local = attn.pwc(attn.dwc(grid)).flatten(2).transpose(1, 2)
    outputs = []
    for p, lam in ((p_main, attn.lambda_scale_main), (p_local, attn.lambda_scale_aux)):
        q, k, v, g = p.split(c, dim=-1)
        heads = []
        for h in range(attn.num_heads):
            cols = slice(h * 32, (h + 1) * 32)
            qh, kh, vh, gh = q[..., cols], k[..., cols], v[..., cols], g[..., cols]
            parts = []
            for sub in (slice(0, 16), slice(16, 32)):
                scores = (F.elu(qh[..., sub]) + 1) @ (F.elu(kh[..., sub]) + 1).transpose(1, 2)  # [B, N, N]
                parts.append((scores @ vh) / (scores.sum(-1, keepdim=True) + 1e-6))
            y = parts[0] - lam[h] * parts[1]
            y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + 1e-5) * attn.ln.weight
            heads.append(y * torch.sigmoid(gh))
        outputs.append(torch.cat(heads, dim=-1))
    return attn.out_proj(torch.cat(outputs, dim=-1))


def test_gdla_batched_contraction_equals_the_explicit_per_head_form():
    torch.manual_seed(0)
    attn = pvt_decoders.GatedDifferentialLinearAttention(dim=64, num_heads=2)
    with torch.no_grad():  # make the RMSNorm weight non-trivial
        attn.ln.weight.uniform_(0.5, 1.5)
    x, size = torch.randn(2, 6 * 10, 64), (6, 10)
    torch.testing.assert_close(attn(x, size), reference_gdla(attn, x, size), rtol=0, atol=1e-5)


def peak_live_bytes(run) -> int:
    """Most bytes of tensor memory alive at once while ``run()`` runs (torch.profiler's allocation events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def test_gdla_holds_its_intermediates_only_while_needed():
    # the two passes' projections [2, B, N, 4C] are 8 inputs' worth; with the per-pass copies, the feature maps
    # and both subspaces' outputs all held through the norm, an inference pass peaked at 30 inputs' worth
    torch.manual_seed(0)
    attn = pvt_decoders.GatedDifferentialLinearAttention(dim=64, num_heads=2).eval()
    x, size = torch.randn(2, 28 * 28, 64), (28, 28)
    with torch.inference_mode():
        peak = peak_live_bytes(lambda: attn(x, size))
    assert peak <= 20 * x.nbytes, f"{peak / x.nbytes:.1f} inputs' worth alive at once"


def test_linear_attention_baseline_equals_explicit_form():
    torch.manual_seed(0)
    attn = pvt_decoders.LinearAttention(dim=64, num_heads=2)
    x = torch.randn(2, 48, 64)
    q, k, v = attn.qkv(x).reshape(2, 48, 3, 2, 32).permute(2, 0, 3, 1, 4)
    y = linear_attention_explicit(F.elu(q) + 1, F.elu(k) + 1, v)
    expected = attn.out_proj(y.transpose(1, 2).reshape(2, 48, 64))
    torch.testing.assert_close(attn(x, (6, 8)), expected, rtol=0, atol=1e-5)


def test_differential_attention_equals_explicit_softmax_maps():
    torch.manual_seed(0)
    attn = pvt_decoders.DifferentialAttention(dim=64, num_heads=2, depth=2)
    x = torch.randn(1, 20, 64)
    q, k, v = attn.qkv(x).split(64, dim=-1)
    n = 20
    pos = torch.arange(n, dtype=torch.float32)[:, None] * 10000 ** (-torch.arange(0, 16, 2) / 16)

    def rope(t):  # [N, 16] interleaved pairs
        e, o = t[:, 0::2], t[:, 1::2]
        return torch.stack((e * pos.cos() - o * pos.sin(), e * pos.sin() + o * pos.cos()), -1).flatten(-2)

    lam = (
        torch.exp((attn.lambda_q1 * attn.lambda_k1).sum())
        - torch.exp((attn.lambda_q2 * attn.lambda_k2).sum())
        + attn.lambda_init
    )
    heads = []
    for h in range(2):
        maps = []
        for j in (2 * h, 2 * h + 1):
            qj, kj = rope(q[0, :, j * 16 : (j + 1) * 16]), rope(k[0, :, j * 16 : (j + 1) * 16])
            maps.append(torch.softmax(qj @ kj.T / 4.0, dim=-1))
        y = (maps[0] - lam * maps[1]) @ v[0, :, h * 32 : (h + 1) * 32]
        heads.append(attn.subln(y) * (1 - attn.lambda_init))
    expected = attn.out_proj(torch.cat(heads, dim=-1))[None]
    assert attn.lambda_init == pytest.approx(0.8 - 0.6 * torch.exp(torch.tensor(-0.6)).item())
    torch.testing.assert_close(attn(x, (4, 5)), expected, rtol=0, atol=1e-5)


def test_token_grid_views_round_trip_on_non_square_grids():
    x = torch.randn(2, 6 * 4, 8)
    grid = tokens_to_grid(x, (6, 4))
    assert grid.shape == (2, 8, 6, 4)
    assert torch.equal(grid[0, :, 1, 2], x[0, 1 * 4 + 2])
    assert torch.equal(grid_to_tokens(grid), x)
    with pytest.raises(ValueError, match="24 tokens do not fill a 5 x 5 grid"):
        tokens_to_grid(x, (5, 5))


# ---------------------------------------------------------------- ablation options


def changed_keys(base: torch.nn.Module, variant: torch.nn.Module) -> set[str]:
    a, b = shapes(base), shapes(variant)
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def per_block(formula) -> int:
    return sum(formula(c) for c in DECODER_WIDTHS)


@pytest.mark.parametrize(
    "option, touched, delta",
    [
        ({"differential": False}, r"de\d\.attn\.lambda_scale_(main|aux)", per_block(lambda c: 2 * c)),
        (
            {"local_mixing": False},
            r"de\d\.attn\.(dwc|pwc|lambda_scale_aux|out_proj)\.?.*",
            per_block(lambda c: 4 * c * 9 + 4 * c + 16 * c * c + 4 * c + c + c * c),
        ),
        (
            {"gate": None},
            r"de\d\.attn\.(qkvg|dwc|pwc)\..*",
            per_block(lambda c: (c * c + c) + (c * 9 + c) + (7 * c * c + c)),
        ),
        ({"mixer_kernel_size": 5}, r"de\d\.attn\.dwc\.weight", per_block(lambda c: -4 * c * (25 - 9))),
        ({"mixer_kernel_size": 7}, r"de\d\.attn\.dwc\.weight", per_block(lambda c: -4 * c * (49 - 9))),
        ({"up_kernel_size": 5}, r"up\d\.up\.weight", -(512 * 320 + 320 * 128 + 128 * 64) * (25 - 9)),
        ({"ffn": "swiglu"}, r"de\d\.mlp\..*", per_block(lambda c: (12 * c * c + 88 * c) - (12 * c * c + 9 * c))),
        ({"ffn": "mlp"}, r"de\d\.mlp\..*", per_block(lambda c: (12 * c * c + 88 * c) - (8 * c * c + 5 * c))),
    ],
)
def test_each_ablation_changes_exactly_what_it_names(option, touched, delta):
    import re

    base, variant = build(), build(**option)
    changed = changed_keys(base, variant)
    assert changed, "the option changed nothing"
    assert all(re.fullmatch(touched, k) for k in changed), sorted(changed)
    assert n_params(base) - n_params(variant) == delta


def test_silu_gate_changes_the_function_not_the_parameters():
    torch.manual_seed(0)
    sigmoid_gate = pvt_decoders.GatedDifferentialLinearAttention(64, 2, gate="sigmoid")
    silu_gate = pvt_decoders.GatedDifferentialLinearAttention(64, 2, gate="silu")
    silu_gate.load_state_dict(sigmoid_gate.state_dict())
    x = torch.randn(1, 16, 64)
    assert not torch.allclose(sigmoid_gate(x, (4, 4)), silu_gate(x, (4, 4)))
    with pytest.raises(ValueError, match="unknown gate 'tanh'"):
        pvt_decoders.GatedDifferentialLinearAttention(64, 2, gate="tanh")


@pytest.mark.parametrize("encoder, widths", [("pvt_v2_b0", [32, 64, 160, 256]), ("pvt_v2_b1", [64, 128, 320, 512])])
def test_other_encoder_sizes_set_the_decoder_widths(encoder, widths):
    model = build(encoder=encoder)
    assert model.head4.in_channels == widths[3] and model.de1.norm1.normalized_shape == (widths[2],)
    assert model.de3.attn.num_heads == widths[0] // 32
    model.eval()
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 9, 64, 64)


def test_stochastic_depth_rate_reaches_the_encoder():
    rates = [m.drop_prob for m in build(drop_path_rate=0.3).backbone.modules() if hasattr(m, "drop_prob")]
    assert max(rates) == pytest.approx(0.3, abs=1e-6) and rates == sorted(rates)  # timm's linear ramp
    assert all(m.drop_prob == 0.0 for m in build(drop_path_rate=0.0).backbone.modules() if hasattr(m, "drop_prob"))


def test_feature_map_is_elu_plus_one_in_every_precision():
    x = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([0.0, -1e-8, 1e-8])])
    torch.testing.assert_close(elu_feature_map(x), F.elu(x) + 1, rtol=1e-6, atol=1e-7)
    for dtype in (torch.bfloat16, torch.float16):
        low = x.to(dtype)
        torch.testing.assert_close(elu_feature_map(low).float(), F.elu(low.float()) + 1, rtol=1e-2, atol=1e-2)
    assert (elu_feature_map(x) > 0).all()


def _randomise_batch_norms(module: torch.nn.Module) -> None:
    for norm in module.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.data.uniform_(0.5, 2)
            norm.bias.data.uniform_(-1, 1)


@pytest.mark.parametrize("in_channels, out_channels", [(1, 16), (3, 8), (8, 8)])
def test_folded_residual_branch_equals_the_module(in_channels, out_channels):
    torch.manual_seed(0)
    block = ResBlock(in_channels, out_channels).eval()
    _randomise_batch_norms(block)
    x = torch.randn(2, in_channels, 20, 24)
    folded = block.folded(x)
    assert folded.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(folded, block(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_eval_head_equals_the_published_formula(channels_last):
    """Eval mode reorders out1 = head1(bilinear(d1) + resblk(x)); the map must not change."""
    torch.manual_seed(0)
    model = create_network("pvt_gdla", in_channels=1, num_classes=4, encoder="pvt_v2_b0", encoder_weights="random")
    _randomise_batch_norms(model.eval())
    x = torch.randn(2, 1, 64, 96)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = model(x)
        model.fast_eval_head = False
        written = model(x)
        features = model.encode(x)
        h, decoded = features[-1], []
        for stage in range(3):
            h = model.refine(stage, model.fuse(stage, h, features))
            decoded.append(h)
        upsampled = F.interpolate(decoded[-1], size=(64, 96), mode="bilinear", align_corners=False)
        formula = model.head1(upsampled + model.resblk(x))
    torch.testing.assert_close(written, formula)
    torch.testing.assert_close(fast, formula, rtol=1e-4, atol=1e-5)


def test_rms_norm_of_large_half_precision_activations_stays_finite():
    norm = RMSNorm(32)
    x = torch.full((4, 32), 1000.0)  # squares exceed float16's 65504
    out = norm(x.half())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, norm(x))
