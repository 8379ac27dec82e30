"""PVT-EMCAD: shapes, gradients, the published parameter count, the gray stems and the building blocks."""

from __future__ import annotations

import copy

import pytest
import torch

from common.networks import create_network
from common.networks.emcad import EMCADDecoder, channel_shuffle

# no stochastic depth: a block dropped for the whole batch would get no gradient
SMALL = {"encoder": "pvt_v2_b0", "encoder_weights": "random", "drop_path_rate": 0.0}


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def small_nets() -> dict[int, torch.nn.Module]:
    """PVT-v2-b0 EMCAD nets for 1- and 3-channel images, K = 9; tests that change them take a copy."""
    torch.manual_seed(0)
    return {c: create_network("pvt_emcad", in_channels=c, **SMALL).eval() for c in (1, 3)}


@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_shapes(small_nets, in_channels):
    net = small_nets[in_channels]
    with torch.no_grad():
        assert net(torch.randn(1, in_channels, 224, 224)).shape == (1, 9, 224, 224)
        outputs = net.forward_all(torch.randn(2, in_channels, 256, 192))
    assert [tuple(o.shape) for o in outputs] == [(2, 9, 256, 192)] * 4
    assert not torch.equal(outputs[0], outputs[-1])


def test_training_returns_the_four_maps_only_with_deep_supervision(small_nets):
    x = torch.randn(2, 1, 64, 64)
    with_ds = copy.deepcopy(small_nets[1]).train()
    without = create_network("pvt_emcad", deep_supervision=False, **SMALL).train()
    assert [tuple(o.shape) for o in with_ds(x)] == [(2, 9, 64, 64)] * 4
    assert without(x).shape == (2, 9, 64, 64)
    assert not hasattr(without, "aux_heads")


def test_every_parameter_gets_a_gradient(small_nets):
    net = copy.deepcopy(small_nets[1])  # eval: LGAG's biases just before a training-mode BN have zero gradient
    sum(o.square().mean() for o in net.forward_all(torch.randn(2, 1, 64, 64))).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [], missing


def test_published_parameter_count():
    """EMCAD-B2: 26.76 M with K = 1 (24,849,856 encoder + 1,913,515 decoder + heads); 8,224 more with K = 9."""
    with torch.device("meta"):
        published = create_network("pvt_emcad", in_channels=3, num_classes=1, encoder_weights="random")
        synapse = create_network("pvt_emcad", in_channels=1, num_classes=9, encoder_weights="random")
    assert parameter_count(published.backbone) == 24_849_856
    assert parameter_count(published.decoder) == 1_913_515
    assert parameter_count(published) == 26_764_399
    assert parameter_count(synapse) == 26_772_635  # + 12 for the 1 -> 3 stem, + 8 x 1,028 for the heads
    assert round(parameter_count(published) / 1e6, 2) == 26.76


def test_gray_stems(small_nets):
    conv = small_nets[1]
    repeat = create_network("pvt_emcad", in_channels=1, gray_stem="repeat", **SMALL).eval()
    rgb = copy.deepcopy(small_nets[3])
    assert parameter_count(conv) - parameter_count(repeat) == 12  # Conv1x1 1 -> 3 with bias, BN(3)
    assert parameter_count(repeat) == parameter_count(rgb)
    rgb.load_state_dict(repeat.state_dict())
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(repeat(x), rgb(x.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="gray_stem"):
        create_network("pvt_emcad", gray_stem="average", encoder_weights="random")


def test_decoder_initialisation():
    torch.manual_seed(0)
    decoder = EMCADDecoder()
    weight = decoder.mscb[0].expand[0].weight  # 1024 x 512
    assert abs(weight.std().item() - 0.02) < 0.001
    assert torch.equal(decoder.up[0].pointwise.bias, torch.zeros(320))
    assert torch.equal(decoder.gates[0].attention[0][1].weight, torch.ones(1))


def test_decoder_stage_shapes_and_widths():
    decoder = EMCADDecoder((64, 32, 16, 8)).eval()
    features = [torch.randn(2, c, s, s) for c, s in ((8, 32), (16, 16), (32, 8), (64, 4))]
    with torch.no_grad():
        decoded = decoder(features)
    assert [tuple(d.shape) for d in decoded] == [(2, 64, 4, 4), (2, 32, 8, 8), (2, 16, 16, 16), (2, 8, 32, 32)]
    assert len(decoder.mscb[0].depthwise) == 3
    assert [conv[0].kernel_size for conv in decoder.mscb[0].depthwise] == [(1, 1), (3, 3), (5, 5)]
    assert decoder.gates[0].gate_conv[0].groups == 16  # C / 2 groups of two channels


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_bad_input_is_refused_with_the_expected_shape(small_nets):
    net = small_nets[1]
    with pytest.raises(ValueError, match=r"expected input \[B, 1, H, W\].*got \(1, 1, 64, 48\)"):
        net(torch.randn(1, 1, 64, 48))
    with pytest.raises(ValueError, match="got \\(1, 3, 64, 64\\)"):
        net(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="activation"):
        EMCADDecoder(activation="gelu")
