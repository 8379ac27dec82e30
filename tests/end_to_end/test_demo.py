"""The demo: its dataset of MNI152 slabs (nilearn's real template) and, marked slow, a quick end-to-end run."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.__main__ import main
from common.apps.demo import (
    DATASET_FOLDER,
    HELD_OUT_SLICES,
    TISSUES,
    VALIDATION_SLICES,
    mni152_tissue,
    slab_bounds,
    tissue_labels,
    write_slab_dataset,
)
from common.data import get_dataset
from common.data.splits import read_splits


def test_tissue_labels_pick_the_likeliest_tissue_inside_the_brain():
    grey = np.array([0.7, 0.2, 0.1, 0.45, 0.9])
    white = np.array([0.2, 0.7, 0.1, 0.45, 0.05])
    brain = np.array([1, 1, 1, 1, 0])
    # CSF = 1 - grey - white: 0.1, 0.1, 0.8, 0.1, (outside)
    np.testing.assert_array_equal(tissue_labels(grey, white, brain), [2, 3, 1, 2, 0])


def test_slabs_cover_the_volume_once():
    splits = slab_bounds(95, (40, 56), (64, 72))
    assert splits == {"train": [(0, 40), (56, 64), (72, 95)], "validation": [(64, 72)], "test": [(40, 56)]}
    covered = sorted(z for slabs in splits.values() for start, stop in slabs for z in range(start, stop))
    assert covered == list(range(95))


def test_slab_dataset_reassembles_the_template(tmp_path):
    image, labels = mni152_tissue()
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    dataset, split_file = write_slab_dataset(tmp_path, image, labels)

    reader = get_dataset("nnunet", root=dataset)
    assert reader.label_names == TISSUES and reader.intensity == "minmax"
    lists = reader.datalists(dataset, split_file)
    assert [e["case"] for e in lists["test"]] == [f"mni152_z{HELD_OUT_SLICES[0]:03d}-{HELD_OUT_SLICES[1] - 1:03d}"]
    assert [e["case"] for e in lists["validation"]] == [
        f"mni152_z{VALIDATION_SLICES[0]:03d}-{VALIDATION_SLICES[1] - 1:03d}"
    ]
    assert read_splits(split_file, "nnunet")["test"] == [lists["test"][0]["case"]]
    rebuilt_image, rebuilt_labels = np.zeros(image.shape, np.float32), np.zeros(labels.shape, np.uint8)
    top, covered = 78, []  # the empty slices above the brain, 78-94, are left out
    for entry in (e for split in lists.values() for e in split):
        slab, slab_labels = nib.load(entry["image"]), nib.load(entry["label"])
        start = int(round(np.linalg.solve(image.affine, slab.affine @ [0, 0, 0, 1])[2]))  # its place in the scanner
        np.testing.assert_allclose(slab.affine[:3, :3], image.affine[:3, :3])
        rebuilt_image[:, :, start : start + slab.shape[2]] = np.asarray(slab.dataobj)
        rebuilt_labels[:, :, start : start + slab.shape[2]] = np.asarray(slab_labels.dataobj)
        covered += list(range(start, start + slab.shape[2]))
    assert not labels[:, :, top:].any() and labels[:, :, top - 1].any()
    np.testing.assert_array_equal(rebuilt_image[:, :, :top], np.asarray(image.dataobj)[:, :, :top])
    np.testing.assert_array_equal(rebuilt_labels, labels)
    assert sorted(covered) == list(range(top))  # every slice up to the top of the brain, once
    assert json.loads((dataset / "dataset.json").read_text())["channel_names"] == {"0": "T1"}
    assert dataset.name == DATASET_FOLDER


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    output = tmp_path / "demo"

    assert main(["demo", "--quick", "--output", str(output)]) == 0

    printed = capsys.readouterr().out
    for tissue in TISSUES[1:] + ("mean",):
        assert re.search(rf"^  {tissue}\s+[01]\.\d{{3}}$", printed, re.MULTILINE), printed[-2000:]
    template = nib.load(output / "input" / "mni152_t1.nii.gz")
    segmentation = nib.load(output / "segmentation" / "mni152_t1_seg.nii.gz")
    assert segmentation.shape == template.shape
    np.testing.assert_allclose(segmentation.affine, template.affine)
    assert set(np.unique(np.asarray(segmentation.dataobj))) <= {0, 1, 2, 3}
    for picture in (output / "segmentation" / "mni152_t1_overlay.png", output / "learning_curve.png"):
        assert str(picture) in printed
        assert Image.open(picture).size[0] > 100
    bundle = output / "bundle" / "pvt_gdla_nnunet_segmentation"
    assert (bundle / "models" / "model.pt").is_file()
    summary = (bundle / "eval" / "summary.csv").read_text()
    assert "grey matter" in summary and "white matter" in summary
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["spatial_size"] == [64, 64] and inference["network_def"]["encoder"] == "pvt_v2_b0"
