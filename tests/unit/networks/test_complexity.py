"""Params and MACs the paper's way, and true FLOPs that see the attention products."""

from __future__ import annotations

import pytest
import torch

from common.networks import create_network
from common.networks.blocks import build_ffn
from common.networks.complexity import count_parameters, paper_macs, true_flops, truncate
from common.networks.papers import GDLA_TABLE_COMPLEXITY as PUBLISHED
from common.networks.pvt_decoders import DecoderBlock, build_mixer


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_paper_counts_reproduce_the_published_table(name):
    model = create_network(name, in_channels=1, num_classes=9, deep_supervision=True, encoder_weights="random")
    params, flops = PUBLISHED[name]
    assert truncate(count_parameters(model) / 1e6) == params
    assert truncate(paper_macs(model) / 1e9) == flops
    assert model.training, "counting must not leave the model in eval mode"


def test_the_fast_eval_head_is_counted_as_the_authors_wrote_it():
    """6,850,475,821 MACs: ptflops 0.7.4 on the module-by-module final head (6.85 G truncated, barely)."""
    model = create_network("pvt_gdla", in_channels=1, num_classes=9, encoder_weights="random")
    assert paper_macs(model) == 6_850_475_821
    assert model.fast_eval_head, "counting must switch the fast head back on"
    model.fast_eval_head = False
    assert paper_macs(model) == 6_850_475_821
    assert not model.fast_eval_head, "counting must leave a switched-off fast head off"


def test_truncation_is_not_rounding():
    assert truncate(5.4099) == 5.40 and truncate(28.258) == 28.25


def block_flops(mixer: str, side: int, dim: int = 64) -> int:
    block = DecoderBlock(dim, build_mixer(mixer, dim, depth=1), build_ffn("mlp", dim), input_conv=False)

    class Grid(torch.nn.Module):
        def forward(self, x):
            return block(x, (side, side))

    return true_flops(Grid(), (side * side, dim))


def test_true_flops_grow_linearly_for_gdla_and_quadratically_for_softmax():
    gdla = block_flops("gdla", 28), block_flops("gdla", 56)
    softmax = block_flops("softmax", 28), block_flops("softmax", 56)
    assert gdla[1] / gdla[0] == pytest.approx(4.0, rel=1e-3)
    assert 10.0 < softmax[1] / softmax[0] < 16.0
