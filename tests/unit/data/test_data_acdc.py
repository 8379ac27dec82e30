"""ACDC: ED/ES frames from Info.cfg, the 70/10/20 patient split, problems named per patient."""

from __future__ import annotations

import pytest
from miniature_layouts import write_acdc

from common.data import DatasetLayoutError, get_dataset
from common.data.acdc import read_info_cfg


def test_frames_and_patient_split(tmp_path):
    root = write_acdc(tmp_path, n_patients=10)
    reader = get_dataset("acdc")
    lists = reader.datalists(root)
    patients = {name: {e["case"] for e in entries} for name, entries in lists.items()}
    assert [len(patients[s]) for s in ("train", "validation", "test")] == [7, 1, 2]
    assert [len(lists[s]) for s in ("train", "validation", "test")] == [14, 2, 4]  # ED and ES of each patient
    assert not (patients["train"] & patients["validation"] or patients["train"] & patients["test"])
    assert get_dataset("acdc").datalists(root) == lists  # deterministic (seed 42)
    assert get_dataset("acdc", seed=1).splits(root) != reader.splits(root)

    entry = next(e for e in lists["train"] if e["phase"] == "ES")
    info = read_info_cfg(root / "database" / "training" / entry["case"] / "Info.cfg")
    assert entry["frame"] == int(info["ES"]) and entry["image"].endswith(
        f"{entry['case']}_frame{entry['frame']:02d}.nii.gz"
    )
    assert entry["label"] == entry["image"].replace(".nii.gz", "_gt.nii.gz")

    report = reader.check(root)
    assert report.ok and sorted(report.value_counts) == [0, 1, 2, 3] and report.label_values[2] == "myocardium"
    assert any("testing" in note for note in report.notes)


def test_missing_info_and_frame_are_reported_per_patient(tmp_path):
    root = write_acdc(tmp_path, n_patients=4)
    patients = root / "database" / "training"
    (patients / "patient002" / "Info.cfg").unlink()
    (patients / "patient003" / "patient003_frame01_gt.nii.gz").unlink()
    report = get_dataset("acdc").check(root)
    assert len(report.problems) == 2
    assert "patient002: no Info.cfg" in report.problems[0]
    assert "patient003: ED frame 1 files missing: patient003_frame01_gt.nii.gz" in report.problems[1]
    assert report.split_counts["train"][0] + report.split_counts["validation"][0] + report.split_counts["test"][0] == 3
    with pytest.raises(DatasetLayoutError, match="2 problem"):
        get_dataset("acdc").datalists(root)
