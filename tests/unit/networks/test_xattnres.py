"""XAttnRes: shapes, gradients, uniform start, pool-only encoder paths without skips, stage views, aggregation."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from common.networks import create_network
from common.networks.xattnres import CrossStageAggregation, PVTDecoderStages, XAttnResNet

# no stochastic depth: a block dropped for the whole batch would get no gradient
SMALL = {"encoder": "pvt_v2_b0", "encoder_weights": "random", "drop_path_rate": 0.0}
NAMES = ["pvt_emcad_xattnres", "pvt_emcad_xattnres_noskip", "pvt_gdla_xattnres", "pvt_gdla_xattnres_noskip"]
#: pool size at each fusing stage: encoder x1..x4 (+ EMCAD's d4) + earlier stage outputs + the current input
POOL_SIZES = {"emcad": [6, 7, 8], "gdla": [5, 6, 7]}


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_stages(stages, x: torch.Tensor, auxiliary: bool) -> list[torch.Tensor]:
    """The host's forward pass through its stage view, without aggregation."""
    features = stages.encode(x)
    decoded = stages.bottleneck(features)
    for stage in range(len(stages.stage_channels)):
        previous = decoded[-1] if decoded else features[-1]
        decoded.append(stages.refine(stage, stages.fuse(stage, previous, features)))
    return stages.predict(x, features, decoded, auxiliary)


@contextlib.contextmanager
def perturbed_skip_features(backbone: torch.nn.Module):
    """Add noise to encoder outputs x1, x2, x3 as the decoder sees them; the next stage still gets the clean one."""
    clean, handles = {}, []
    for i in range(3):

        def add_noise(module, inputs, output, i=i):
            clean[i] = output
            return output + torch.randn_like(output)

        def restore(module, inputs, i=i):
            return (clean[i],)

        handles.append(backbone.stages[i].register_forward_hook(add_noise))
        handles.append(backbone.stages[i + 1].register_forward_pre_hook(restore))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(scope="module")
def small_net():
    """``small_net(name, in_channels)``: a cached PVT-v2-b0 network (K = 9, eval mode); tests that change it copy it."""
    cache = {}

    def build(name: str, in_channels: int = 1) -> torch.nn.Module:
        if (name, in_channels) not in cache:
            torch.manual_seed(0)
            cache[name, in_channels] = create_network(name, in_channels=in_channels, **SMALL).eval()
        return cache[name, in_channels]

    return build


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_shapes(small_net, name, in_channels):
    net = small_net(name, in_channels)
    with torch.no_grad():
        assert net(torch.randn(1, in_channels, 224, 224)).shape == (1, 9, 224, 224)
        outputs = net.forward_all(torch.randn(1, in_channels, 256, 192))
    assert [tuple(o.shape) for o in outputs] == [(1, 9, 256, 192)] * 4


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(small_net, name):
    torch.manual_seed(0)
    net = copy.deepcopy(small_net(name))  # eval: a bias just before a training-mode BN has zero gradient
    outputs = net.forward_all(torch.randn(2, 1, 64, 64))
    assert len(outputs) == 4
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [], missing


@pytest.mark.parametrize("name", ["pvt_emcad_xattnres", "pvt_gdla_xattnres_noskip"])
def test_pool_is_averaged_uniformly_at_initialisation(small_net, name):
    net = small_net(name)
    with torch.no_grad():
        weights = net.attention_maps(torch.randn(2, 1, 64, 96))
    sizes = POOL_SIZES["emcad" if "emcad" in name else "gdla"]
    assert [tuple(a.shape) for a in weights] == [(2, n, 64 // s, 96 // s) for n, s in zip(sizes, (16, 8, 4))]
    for alpha, n in zip(weights, sizes):
        assert torch.equal(alpha, torch.full_like(alpha, 1 / n))


def test_aggregation_at_initialisation_is_the_mean_of_the_aligned_values():
    torch.manual_seed(0)
    aggregate = CrossStageAggregation([4, 8, 6], 6)
    entries = [torch.randn(2, 4, 16, 16), torch.randn(2, 8, 4, 4), torch.randn(2, 6, 8, 8)]
    out, alpha = aggregate(entries)
    assert torch.allclose(out, aggregate.values(entries).mean(dim=1), atol=1e-6)
    with torch.no_grad():
        aggregate.query.normal_()
    out, alpha = aggregate(entries)
    assert not torch.allclose(alpha, torch.full_like(alpha, 1 / 3))
    assert torch.allclose(alpha.sum(dim=1), torch.ones(2, 8, 8))


@pytest.mark.parametrize("downsample", ["bilinear", "area"])
def test_projection_at_the_lower_resolution_equals_resize_then_project(downsample):
    """The spec's order is resize, then project; projecting at the smaller size gives the same values."""
    torch.manual_seed(0)
    aggregate = CrossStageAggregation([4, 8, 6], 6, downsample=downsample)
    fine, coarse, current = torch.randn(1, 4, 32, 32), torch.randn(1, 8, 4, 4), torch.randn(1, 6, 8, 8)
    shrink = (
        F.adaptive_avg_pool2d
        if downsample == "area"
        else (lambda t, size: F.interpolate(t, size=size, mode="bilinear", align_corners=False))
    )
    grow = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    expected = torch.stack(
        [
            aggregate.projections[0](shrink(fine, (8, 8))),
            aggregate.projections[1](grow),
            aggregate.projections[2](current),
        ],
        dim=1,
    )
    assert torch.allclose(aggregate.values([fine, coarse, current]), expected, atol=1e-5)


def test_add_mode_adds_the_aggregation_to_the_current_input():
    torch.manual_seed(0)
    replace = CrossStageAggregation([4, 6], 6)
    add = CrossStageAggregation([4, 6], 6, combine="add")
    add.load_state_dict(replace.state_dict())
    entries = [torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)]
    assert torch.allclose(add(entries)[0], replace(entries)[0] + entries[-1])
    with pytest.raises(ValueError, match="expected 2 pool entries, got 1"):
        add(entries[:1])
    with pytest.raises(ValueError, match="downsample"):
        CrossStageAggregation([4], 4, downsample="nearest")


@pytest.mark.parametrize("host", ["emcad", "gdla"])
def test_encoder_stages_reach_the_decoder_only_through_the_pool_without_skips(small_net, host):
    """Zero the pool projections of x1..x3: the output no longer depends on x1..x3 without skips, still does with."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64, 64)
    for skips in (False, True):
        net = copy.deepcopy(small_net(f"pvt_{host}_xattnres" + ("" if skips else "_noskip")))
        with torch.no_grad():
            for aggregate in net.aggregators:
                aggregate.query.normal_()  # a non-uniform, trained-like weighting
            clean = net(x)
            with perturbed_skip_features(net.network.backbone):
                assert not torch.equal(net(x), clean)  # the perturbation reaches the output
            for aggregate in net.aggregators:
                for projection in aggregate.projections[:3]:  # pool entries x1, x2, x3
                    projection.weight.zero_()
            clean = net(x)
            with perturbed_skip_features(net.network.backbone):
                assert torch.equal(net(x), clean) != skips


@pytest.mark.parametrize("name", NAMES)
def test_stage_views_reproduce_the_host(small_net, name):
    network = small_net(name).network
    stages = PVTDecoderStages(network) if "gdla" in name else network
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        expected = network.forward_all(x)
        assert all(torch.equal(a, b) for a, b in zip(run_stages(stages, x, True), expected))
        assert torch.equal(run_stages(stages, x, False)[0], expected[-1])


def test_emcad_host_uses_x1_to_x3_only_through_its_skips(small_net):
    x = torch.randn(1, 1, 64, 64)
    for name, skips in (("pvt_emcad_xattnres", True), ("pvt_emcad_xattnres_noskip", False)):
        net = small_net(name).network
        with torch.no_grad():
            clean = net.forward_all(x)
            with perturbed_skip_features(net.backbone):
                perturbed = net.forward_all(x)
        # out4 comes from d4 = MSCAM(x4), which no skip reaches
        assert [not torch.equal(a, b) for a, b in zip(clean, perturbed)] == [False, skips, skips, skips]
        assert hasattr(net.decoder, "gates") == skips


def test_hosts_without_the_stage_protocol_are_refused(small_net):
    network = small_net("pvt_gdla_xattnres").network
    with pytest.raises(TypeError, match="PVTDecoderStages"):
        XAttnResNet(network)
    with pytest.raises(TypeError, match="expected a PVTDecoderNet"):
        PVTDecoderStages(torch.nn.Conv2d(1, 1, 1))


def test_parameter_counts_with_pvt_v2_b2():
    """Synapse setting (1 channel, K = 9, deep supervision): the host's count, then with the aggregators."""
    hosts, totals = {}, {}
    with torch.device("meta"):
        for name in NAMES:
            net = create_network(name, in_channels=1, num_classes=9, encoder_weights="random")
            hosts[name], totals[name] = parameter_count(net.network), parameter_count(net)
    assert hosts == {
        "pvt_emcad_xattnres": 26_772_635,  # pvt_emcad
        "pvt_emcad_xattnres_noskip": 26_761_618,  # without the three LGAGs (11,017)
        "pvt_gdla_xattnres": 32_134_607,  # pvt_gdla
        "pvt_gdla_xattnres_noskip": 32_134_607,
    }
    assert totals == {
        "pvt_emcad_xattnres": 27_752_091,  # + 979,456: a Conv1x1 per pool entry per stage, and the w_s
        "pvt_emcad_xattnres_noskip": 27_741_074,
        "pvt_gdla_xattnres": 32_851_919,  # + 717,312
        "pvt_gdla_xattnres_noskip": 32_851_919,
    }
