"""The authors' checkpoints load strictly into our models; wrong ones fail with a readable list."""

from __future__ import annotations

import pytest
import torch
from reference_keys import REFERENCE_LAYOUTS, random_state_dict, write_authors_checkpoint
from repo_paths import REPO

from common.networks import create_network
from common.networks.convert import CheckpointMismatchError, load_reference_checkpoint


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
    assert torch.equal(
        ours["backbone.stages.2.blocks.5.mlp.dwconv.weight"], state["backbone.block3.5.mlp.dwconv.dwconv.weight"]
    )
    assert torch.equal(ours["backbone.stages.3.norm.weight"], state["backbone.norm4.weight"])
    fingerprint = lambda t: (tuple(t.shape), round(float(t.double().sum()), 6))  # noqa: E731
    assert sorted(map(fingerprint, ours.values())) == sorted(map(fingerprint, state.values()))  # every value placed


@pytest.mark.parametrize("training", [False, True], ids=["released", "training"])
def test_the_authors_ckpt_files_load_with_weights_only(training, tmp_path):
    """Their ``.ckpt``: ``{"model_state_dict": ...}``, training files with optimizer/scheduler states and a numpy
    float32 ``best_dice``; read with ``weights_only=True`` and only the numpy scalar types allowed."""
    model = create_network("pvt_gdla", encoder_weights="random")
    state = random_state_dict("pvt_gdla", seed=3)
    path = write_authors_checkpoint(tmp_path / "best.ckpt", state, training=training)
    load_reference_checkpoint(model, path)
    assert torch.equal(model.state_dict()["backbone.stages.3.norm.weight"], state["backbone.norm4.weight"])


def test_a_checkpoint_holding_other_objects_is_refused_naming_them(tmp_path):
    import numpy as np

    model = create_network("pvt_gdla", encoder_weights="random")
    path = tmp_path / "odd.ckpt"
    torch.save({"model_state_dict": random_state_dict("pvt_gdla"), "confusion": np.zeros((2, 2))}, path)
    with pytest.raises(ValueError, match=r"odd.ckpt: refused; .* it refers to numpy\._?core\.multiarray\._reconstruct"):
        load_reference_checkpoint(model, path)
    torch.save({"epoch": 3, "best_dice": 0.5}, path)
    with pytest.raises(ValueError, match=r"odd.ckpt: expected a dict of tensors, found dict with keys \['best_dice', "):
        load_reference_checkpoint(model, path)


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


def test_segment_weights_accept_the_authors_ckpt(tmp_path):
    """``segment --weights`` (load_bundle) reads an authors' training .ckpt into the bundle's network."""

    from reference_keys import write_authors_checkpoint

    from common.segment.segmenter import SegmentOptions, load_bundle

    state = random_state_dict("pvt_gdla", seed=5)
    path = write_authors_checkpoint(tmp_path / "best.ckpt", state, training=True)
    bundle = REPO / "bundles" / "pvt_gdla_synapse_segmentation"
    segmenter = load_bundle(bundle, SegmentOptions(weights=path, device="cpu"))
    assert torch.equal(segmenter.network.state_dict()["backbone.stages.0.norm.weight"], state["backbone.norm1.weight"])
