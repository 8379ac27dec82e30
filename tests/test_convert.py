"""The authors' checkpoints load strictly into our models; wrong ones fail with a readable list."""

from __future__ import annotations

import pytest
import torch

from common.convert import CheckpointMismatchError, load_reference_checkpoint
from common.networks import create_network
from reference_keys import REFERENCE_LAYOUTS, random_state_dict


@pytest.mark.parametrize("name", sorted(REFERENCE_LAYOUTS))
def test_reference_layout_loads_strictly_and_every_tensor_lands(name, tmp_path):
    model = create_network(name, encoder_weights="random")
    state = random_state_dict(name)
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": state}, path)
    load_reference_checkpoint(model, path)
    ours = model.state_dict()
    assert len(ours) == len(state)
    # decoder names are shared; encoder names go through the PVT v2 -> timm map
    assert torch.equal(ours["de1.attn.out_proj.weight"], state["de1.attn.out_proj.weight"])
    assert torch.equal(ours["backbone.patch_embed.proj.weight"], state["backbone.patch_embed1.proj.weight"])
    assert torch.equal(ours["backbone.stages.1.downsample.norm.bias"], state["backbone.patch_embed2.norm.bias"])
    assert torch.equal(ours["backbone.stages.2.blocks.5.mlp.dwconv.weight"],
                       state["backbone.block3.5.mlp.dwconv.dwconv.weight"])
    assert torch.equal(ours["backbone.stages.3.norm.weight"], state["backbone.norm4.weight"])
    fingerprint = lambda t: (tuple(t.shape), round(float(t.double().sum()), 6))  # noqa: E731
    assert sorted(map(fingerprint, ours.values())) == sorted(map(fingerprint, state.values()))  # every value placed

def test_data_parallel_prefix_is_accepted():
    model = create_network("pvt_linearattn", encoder_weights="random")
    state = {f"module.{k}": v for k, v in random_state_dict("pvt_linearattn").items()}
    load_reference_checkpoint(model, state)


def test_wrong_checkpoint_lists_every_problem():
    model = create_network("pvt_gdla", encoder_weights="random")
    state = random_state_dict("pvt_gdla")
    del state["de2.attn.lambda_scale_aux"]
    state["de9.extra.weight"] = torch.zeros(3)
    state["head1.weight"] = torch.zeros(4, 64, 1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_reference_checkpoint(model, state)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "missing:    de2.attn.lambda_scale_aux (4, 32)" in message
    assert "unexpected: de9.extra.weight (3,)" in message
    assert "shape:      head1.weight checkpoint (4, 64, 1, 1) vs model (9, 64, 1, 1)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a failed load changed the model"


def test_a_baseline_checkpoint_does_not_fit_gdla():
    model = create_network("pvt_gdla", encoder_weights="random")
    with pytest.raises(CheckpointMismatchError, match="de1.attn.qkvg.weight"):
        load_reference_checkpoint(model, random_state_dict("pvt_linearattn"))


def test_unreadable_checkpoint_file_is_named(tmp_path):
    bad = tmp_path / "truncated.pth"
    torch.save(random_state_dict("pvt_linearattn"), bad)
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated.pth: not a readable PyTorch weights file"):
        load_reference_checkpoint(create_network("pvt_linearattn", encoder_weights="random"), bad)
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        load_reference_checkpoint(create_network("pvt_linearattn", encoder_weights="random"), tmp_path / "missing.pth")
