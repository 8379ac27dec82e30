"""ImageNet encoder weights come from a local file in either format; no file means a loud warning."""

from __future__ import annotations

import pytest
import torch
from reference_keys import random_state_dict

from common.networks import create_network
from common.networks.encoders import RandomEncoderWarning


def original_release_weights(seed: int = 1) -> dict[str, torch.Tensor]:
    """An ImageNet file in the original PVT v2 release format (with its classifier head)."""
    state = {
        k[len("backbone.") :]: v for k, v in random_state_dict("pvt_gdla", seed).items() if k.startswith("backbone.")
    }
    state["head.weight"], state["head.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return state


def test_original_release_format_loads(tmp_path):
    path = tmp_path / "pvt_v2_b2.pth"
    weights = original_release_weights()
    torch.save(weights, path)
    model = create_network("pvt_gdla", encoder_weights=str(path))
    ours = model.backbone.state_dict()
    assert torch.equal(ours["stages.0.blocks.2.attn.sr.weight"], weights["block1.2.attn.sr.weight"])
    assert torch.equal(ours["patch_embed.proj.weight"], weights["patch_embed1.proj.weight"])


def test_timm_format_loads_and_adapts_other_input_channels(tmp_path):
    source = create_network("pvt_gdla", encoder_weights="random").backbone.state_dict()
    path = tmp_path / "timm_b2.pth"
    torch.save(source, path)
    model = create_network("pvt_gdla", in_channels=3, encoder_weights=path)
    assert torch.equal(
        model.backbone.state_dict()["stages.3.blocks.2.mlp.fc2.weight"], source["stages.3.blocks.2.mlp.fc2.weight"]
    )
    two_channel = create_network("pvt_gdla", in_channels=2, encoder_weights=path)
    assert two_channel.backbone.patch_embed.proj.weight.shape[1] == 2


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth does not exist"):
        create_network("pvt_gdla", encoder_weights=tmp_path / "nowhere.pth")


def test_weights_of_another_encoder_are_refused(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(create_network("pvt_gdla", encoder="pvt_v2_b0", encoder_weights="random").backbone.state_dict(), path)
    with pytest.raises(ValueError, match="b0.pth: not PVT-v2 weights for this encoder.*mismatched"):
        create_network("pvt_gdla", encoder_weights=path)


def test_no_file_warns_that_the_encoder_is_random():
    with pytest.warns(RandomEncoderWarning, match="RANDOMLY initialised"):
        create_network("pvt_linearattn")
