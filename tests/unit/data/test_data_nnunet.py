"""nnU-Net raw layout (and the Decathlon variant): dataset.json, channel suffixes, splits, problems."""

from __future__ import annotations

import json

import pytest
from miniature_layouts import write_nifti, write_nnunet

from common.data import DatasetLayoutError, get_dataset
from common.transforms.pipelines import volume_transforms


def test_v2_layout_channels_labels_and_split(tmp_path):
    folder = write_nnunet(tmp_path, n_train=5, n_test=2, n_channels=2)
    reader = get_dataset("nnunet", root=folder)
    assert reader.label_names == ("background", "liver", "tumour") and reader.num_classes == 3
    assert (
        reader.spatial_dims == 3 and reader.stored_as == "volumes" and reader.intensity == "minmax"
    )  # CT + MR channels
    lists = reader.datalists()
    assert [len(lists[s]) for s in ("train", "validation", "test")] == [4, 1, 2]
    entry = lists["train"][0]
    assert [p.rsplit("_", 1)[1] for p in entry["image"]] == ["0000.nii.gz", "0001.nii.gz"]  # the ._ file is ignored
    assert all(e["subset"] == "imagesTs" and "label" in e for e in lists["test"])
    volume = volume_transforms(reader)(entry)
    assert volume["image"].shape == (2, 16, 16, 5) and volume["label"].shape == (1, 16, 16, 5)
    assert reader.check().ok


def test_ct_only_dataset_uses_the_ct_window(tmp_path):
    reader = get_dataset("nnunet", root=write_nnunet(tmp_path, n_train=2, n_test=0))
    assert reader.intensity == "ct_window"


def test_missing_channel_and_label_are_problems(tmp_path):
    folder = write_nnunet(tmp_path, n_train=4, n_test=0, n_channels=2)
    (folder / "imagesTr" / "mini_001_0001.nii.gz").unlink()
    (folder / "labelsTr" / "mini_002.nii.gz").unlink()
    report = get_dataset("nnunet").check(folder)
    assert report.problems == [
        f"{folder / 'imagesTr'}: case mini_001 has channels [0], dataset.json names [0, 1]",
        f"{folder / 'imagesTr' / 'mini_002_0000.nii.gz'}: no label {folder / 'labelsTr' / 'mini_002.nii.gz'}",
    ]


def test_decathlon_layout(tmp_path):
    folder = tmp_path / "Task09_Spleen"
    import numpy as np

    for case in ("spleen_2", "spleen_3", "spleen_5"):
        write_nifti(folder / "imagesTr" / f"{case}.nii.gz", np.zeros((8, 8, 3), np.int16))
        write_nifti(folder / "labelsTr" / f"{case}.nii.gz", np.ones((8, 8, 3), np.uint8))
    write_nifti(folder / "imagesTs" / "spleen_1.nii.gz", np.zeros((8, 8, 3), np.int16))
    description = {
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
            for c in ("spleen_2", "spleen_3", "spleen_5")
        ],
        "test": ["./imagesTs/spleen_1.nii.gz"],
    }
    (folder / "dataset.json").write_text(json.dumps(description))
    reader = get_dataset("nnunet", root=folder)
    lists = reader.datalists()
    assert reader.label_names == ("background", "spleen") and reader.intensity == "ct_window"
    assert sorted(e["case"] for s in ("train", "validation") for e in lists[s]) == ["spleen_2", "spleen_3", "spleen_5"]
    assert [e["case"] for e in lists["test"]] == ["spleen_1"] and "label" not in lists["test"][0]


def test_unusable_dataset_json(tmp_path):
    with pytest.raises(DatasetLayoutError, match="expected: dataset.json"):
        get_dataset("nnunet").scan(tmp_path)
    (tmp_path / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 2}})
    )
    with pytest.raises(DatasetLayoutError, match=r"expected: label values 0, 1, ..., K-1\n  found:    values \[0, 2\]"):
        get_dataset("nnunet").scan(tmp_path)
