"""Synapse: the TransUNet release (npz slices, HDF5 volumes, list files) and the raw BTCV download."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from miniature_layouts import write_synapse_npz, write_synapse_raw
from repo_paths import REPO

from common.data import DatasetLayoutError, get_dataset
from common.data.synapse import BTCV_TO_SYNAPSE, SYNAPSE_LABEL_NAMES, TRANSUNET_TEST_CASES, TRANSUNET_TRAIN_CASES
from common.transforms.pipelines import volume_transforms
from common.transforms.slicing import AxialSlicesd


def test_transunet_split_constants_are_the_published_ones():
    assert len(TRANSUNET_TRAIN_CASES) == 18 and len(TRANSUNET_TEST_CASES) == 12
    assert set(TRANSUNET_TRAIN_CASES).isdisjoint(TRANSUNET_TEST_CASES)
    assert TRANSUNET_TEST_CASES == tuple(f"case{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38))
    reader = get_dataset("synapse")
    assert reader.num_classes == 9 and reader.label_names[1:] == SYNAPSE_LABEL_NAMES[1:] and reader.spatial_dims == 3
    assert SYNAPSE_LABEL_NAMES[1:] == (
        "spleen",
        "right kidney",
        "left kidney",
        "gallbladder",
        "liver",
        "stomach",
        "aorta",
        "pancreas",
    )


def test_npz_release_datalists(tmp_path):
    root = write_synapse_npz(tmp_path, n_train_cases=2, slices_per_case=3, n_test_cases=2)
    lists = get_dataset("synapse").datalists(root)
    assert [len(lists[s]) for s in ("train", "validation", "test")] == [6, 2, 2]
    assert {e["case"] for e in lists["train"]} == set(TRANSUNET_TRAIN_CASES[:2])
    assert lists["validation"] == lists["test"]  # the authors validate on the test volumes
    first = lists["train"][0]
    assert first["image"].endswith("case0005_slice000.npz") and first["image"] == first["label"] and first["slice"] == 0
    assert lists["test"][0]["image"].endswith("test_vol_h5/case0001.npy.h5")

    held_out = get_dataset("synapse", validation_cases=1).datalists(root)
    assert len({e["case"] for e in held_out["validation"]}) == 1 and len(held_out["train"]) == 3
    assert {e["case"] for e in held_out["validation"]}.isdisjoint({e["case"] for e in held_out["train"]})


def test_npz_release_without_lists_and_with_a_listed_file_missing(tmp_path):
    root = write_synapse_npz(tmp_path / "nolists", with_lists=False)
    report = get_dataset("synapse").check(root)
    assert report.ok and any("no lists/lists_Synapse" in note for note in report.notes)

    root = write_synapse_npz(tmp_path / "gap")
    (root / "train_npz" / "case0006_slice001.npz").unlink()
    report = get_dataset("synapse").check(root)
    assert (
        not report.ok
        and "train.txt names files missing" in report.problems[0]
        and "case0006_slice001.npz" in report.problems[0]
    )
    with pytest.raises(DatasetLayoutError, match="case0006_slice001.npz"):
        get_dataset("synapse").datalists(root)


def test_h5_test_volume_slices_come_back_unchanged(tmp_path):
    root = write_synapse_npz(tmp_path, n_train_cases=1, n_test_cases=1, depth=5)
    entry = get_dataset("synapse").datalists(root)["test"][0]
    volume = volume_transforms("synapse")(entry)
    slices = AxialSlicesd()(volume)
    with h5py.File(entry["image"]) as f:
        image, label = f["image"][:], f["label"][:]
    assert len(slices) == 5
    for k in (0, 3):
        np.testing.assert_array_equal(slices[k]["image"][0].numpy(), image[k])
        np.testing.assert_array_equal(slices[k]["label"][0].numpy(), label[k])


def test_raw_btcv_maps_labels_and_windows_ct(tmp_path):
    root = write_synapse_raw(tmp_path, n_train_cases=2, n_test_cases=1)
    reader = get_dataset("synapse_raw")
    lists = reader.datalists(root)
    assert [len(lists[s]) for s in ("train", "validation", "test")] == [2, 1, 1]
    assert lists["test"][0]["case"] == "case0001" and lists["test"][0]["image"].endswith(
        "RawData/Training/img/img0001.nii.gz"
    )

    report = reader.check(root)
    assert report.ok and set(report.value_counts) == {0, 1, 5, 6, 11, 13}
    assert "(-> background)" in report.label_values[5] and report.label_values[6] == "liver"

    entry = lists["train"][0]
    raw_label = np.asanyarray(nib.load(entry["label"]).dataobj)
    raw_image = np.asanyarray(nib.load(entry["image"]).dataobj).astype(np.float32)
    out = volume_transforms(reader, axcodes="RAS")(entry)
    expected_label = np.vectorize(lambda v: BTCV_TO_SYNAPSE.get(int(v), 0))(raw_label)
    np.testing.assert_array_equal(out["label"][0].numpy(), expected_label)  # stored RAS already: no reorientation
    np.testing.assert_allclose(out["image"][0].numpy(), np.clip((raw_image + 125) / 400, 0, 1), atol=1e-6)
    assert out["image"].min() == 0.0 and set(torch.unique(out["label"]).tolist()) == {0.0, 1.0, 5.0, 8.0}


def test_raw_btcv_missing_label_and_wrong_folder(tmp_path):
    root = write_synapse_raw(tmp_path / "raw", n_train_cases=2, n_test_cases=0)
    (root / "RawData" / "Training" / "label" / "label0006.nii.gz").unlink()
    report = get_dataset("synapse_raw").check(root)
    assert not report.ok and "img0006.nii.gz: no label file" in report.problems[0]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        DatasetLayoutError, match=r"expected: RawData/Training/img/img0001.nii.gz(.|\n)*found: .* is empty"
    ):
        get_dataset("synapse_raw").scan(empty)


def test_bundle_validation_switch_holds_out_training_cases():
    """The Synapse bundles' ``validation`` entry: ``test_set`` (the authors' protocol) or ``held_out``."""

    from monai.bundle import ConfigParser

    from common.data.synapse import SELECTION_TEXT, validation_cases_for

    config = REPO / "bundles" / "pvt_gdla_synapse_segmentation" / "configs"
    parser = ConfigParser()
    parser.read_config(str(config / "train.json"))
    assert parser["validation"] == "test_set" and parser.get_parsed_content("reader").validation_cases == 0
    parser["validation"] = "held_out"
    reader = parser.get_parsed_content("reader", lazy=False)
    assert reader.validation_cases == validation_cases_for("held_out") == 4
    assert "held out (seed 42)" in reader.split_origin() and "TransUNet's list" in reader.split_origin()
    cases = {f"case{n:04d}": [] for n in range(1, 41)}
    splits = reader.default_splits(cases)
    assert (
        len(splits["validation"]) == 4
        and len(splits["test"]) == 12
        and not set(splits["validation"]) & set(splits["test"])
    )
    assert "authors' protocol" in SELECTION_TEXT["test_set"] and "not the authors'" in SELECTION_TEXT["held_out"]
    with pytest.raises(ValueError, match="expected one of"):
        validation_cases_for("test")
