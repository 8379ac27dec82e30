"""``python -m common reproduce`` end to end on miniature data in the real layouts."""

from __future__ import annotations

import json
import re

import h5py
import miniature_layouts as layouts
import numpy as np
import pytest
import torch
from bundle_harness import SMALL
from reference_keys import random_state_dict, write_authors_checkpoint

from common.__main__ import main
from common.evaluation.case_tables import read_csv
from common.networks import create_network


@pytest.mark.slow
def test_reproduce_a_synapse_row_from_an_authors_training_checkpoint(tmp_path, capsys):
    """Their ``.ckpt`` (with optimizer, scheduler, epoch, numpy best_dice) through the bundle's evaluation: both
    metric modes beside the published row, excluded pairs, the selection protocol, exit 0."""
    data = layouts.write_synapse_npz(tmp_path / "data", n_train_cases=1, slices_per_case=1, n_test_cases=2, depth=2)
    checkpoint = write_authors_checkpoint(tmp_path / "best.ckpt", random_state_dict("pvt_gdla"), training=True)
    code = main(
        [
            "reproduce",
            "--bundle",
            "pvt_gdla_synapse_segmentation",
            "--dataset_dir",
            str(data),
            "--checkpoint",
            str(checkpoint),
            "--output",
            str(tmp_path / "out"),
            "--set",
            "num_workers=0",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "test set: 2 case(s); split = TransUNet's list (18 train / 12 test)" in printed
    assert "paper = TransUNet's per-case rule in voxels" in printed
    assert "checkpoint selected on the test set (authors' protocol)" in printed
    table = {
        m[1]: m[2].split()
        for m in re.finditer(r"^(mean Dice|HD95 \(voxels\)|HD95 \(mm\)|spleen Dice)\s+(.*)$", printed, re.MULTILINE)
    }
    assert table["mean Dice"][1] == "85.32" and table["HD95 (voxels)"][1] == "12.41"
    assert table["spleen Dice"][1] == "92.96"
    assert table["HD95 (mm)"] == ["-", "-", "-", "-"]  # the .h5 release has no geometry: no mm, not voxels
    assert "pairs excluded from the means: paper_dice 0, paper_hd95_vox 0" in printed
    rows = read_csv(tmp_path / "out" / "eval" / "cases.csv")
    assert sorted({r["case"] for r in rows}) == ["case0001.npy.h5", "case0002.npy.h5"] and len(rows) == 16
    state = torch.load(tmp_path / "out" / "models" / "model.pt", weights_only=True)
    assert torch.equal(state["backbone.stages.3.norm.weight"], random_state_dict("pvt_gdla")["backbone.norm4.weight"])

    # a test volume whose label does not match its image cannot be scored: exit 1, the other case still scored
    with h5py.File(data / "test_vol_h5" / "case0002.npy.h5", "r+") as f:
        del f["label"]
        f["label"] = np.zeros((2, 16, 16), np.float32)
    code = main(
        [
            "reproduce",
            "--bundle",
            "pvt_gdla_synapse_segmentation",
            "--dataset_dir",
            str(data),
            "--checkpoint",
            str(checkpoint),
            "--output",
            str(tmp_path / "out"),
            "--set",
            "num_workers=0",
        ]
    )
    assert code == 1 and "NOT REPRODUCED: 1 case(s) could not be scored" in capsys.readouterr().err
    assert {r["case"] for r in read_csv(tmp_path / "out" / "eval" / "cases.csv")} == {"case0001.npy.h5"}


@pytest.mark.slow
def test_reproduce_with_our_weights_on_ph2(tmp_path, capsys):
    """``--weights`` (our names, wrapped as the authors wrap theirs) on PH2's published test list."""
    data = layouts.write_ph2(tmp_path / "data", n_images=10)
    network = create_network(
        "pvt_gdla", in_channels=3, num_classes=2, deep_supervision=True, encoder="pvt_v2_b0", encoder_weights="random"
    )
    weights = tmp_path / "ours.ckpt"
    torch.save({"model_state_dict": network.state_dict(), "best_dice": np.float32(0.9)}, weights)
    arguments = [
        "reproduce",
        "--bundle",
        "pvt_gdla_ph2_segmentation",
        "--dataset_dir",
        str(data),
        "--weights",
        str(weights),
        "--output",
        str(tmp_path / "out"),
        *[f"--set={k}={v}" for k, v in {**SMALL, "network_def#encoder": "pvt_v2_b0"}.items()],
    ]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "test set: 3 case(s); split = the authors' published list (80 / 20 / 100)" in printed
    assert re.search(r"^mean Dice\s+\S+\s+95\.59", printed, re.MULTILINE)
    assert len({r["case"] for r in read_csv(tmp_path / "out" / "eval" / "cases.csv")}) == 3


def test_reproduce_refuses_a_bundle_without_a_published_row(tmp_path, capsys):
    code = main(
        [
            "reproduce",
            "--bundle",
            "pvt_gdla_xattnres_synapse_segmentation",
            "--dataset_dir",
            str(tmp_path),
            "--weights",
            str(tmp_path / "x.pt"),
        ]
    )
    assert code == 2 and "publishes no row" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_trains_seeds_and_reports_mean_and_sd(tmp_path, capsys):
    data = layouts.write_ph2(tmp_path / "data", n_images=12)  # IMD024 is on the authors' validation list
    small = {
        **SMALL,
        "network_def#encoder": "pvt_v2_b0",
        "epochs": 1,
        "warmup_epochs": 0,
        "batch_size": 2,
        "iterations_per_epoch": 1,
    }
    code = main(
        [
            "reproduce",
            "--bundle",
            "pvt_gdla_ph2_segmentation",
            "--dataset_dir",
            str(data),
            "--train",
            "--seeds",
            "2",
            "--encoder_weights",
            "random",
            "--output",
            str(tmp_path / "out"),
            *[f"--set={k}={json.dumps(v)}" for k, v in small.items()],
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert (tmp_path / "out" / "seed42" / "models" / "model.pt").is_file()
    assert (tmp_path / "out" / "seed43" / "eval" / "cases.csv").is_file()
    assert "2 seed(s), mean +- sd:" in printed
    assert re.search(r"^mean Dice\s+\d+\.\d\d \+- \d+\.\d\d\s+95\.59", printed, re.MULTILINE), printed
