"""``python -m common data check``: counts and label values on good folders, clear refusals on bad ones."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from miniature_layouts import write_acdc, write_nifti, write_ph2

from common.__main__ import main
from common.data import get_dataset, read_splits


def test_check_prints_counts_and_label_values(tmp_path, capsys):
    root = write_acdc(tmp_path, n_patients=10)
    assert main(["data", "check", "--dataset", "acdc", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "ACDC cardiac cine MRI (acdc)" in out
    assert "train              7        14" in out and "test               2         4" in out
    assert "all 20 label files" in out and "3 left ventricle (20 files)" in out and "problems: none" in out


def test_check_writes_the_split_it_used(tmp_path, capsys):
    root = write_ph2(tmp_path / "ph2", n_images=10)
    target = tmp_path / "splits" / "ph2.json"
    assert main(["data", "check", "--dataset", "ph2", "--root", str(root), "--write-splits", str(target)]) == 0
    assert read_splits(target, "ph2") == get_dataset("ph2").splits(root)
    assert f"split written to {target}" in capsys.readouterr().out


def test_unknown_dataset_lists_valid_names(tmp_path, capsys):
    assert main(["data", "check", "--dataset", "brats", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'brats'" in err and "synapse, synapse_raw, acdc, busi, ham10000, ph2, uwmgi, nnunet" in err


def test_empty_folder_says_expected_and_found(tmp_path, capsys):
    assert main(["data", "check", "--dataset", "ph2", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: not a PH2 dermoscopy folder" in err
    assert "expected: PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp" in err
    assert f"found:    {tmp_path} is empty" in err


def test_bad_files_exit_1_naming_each(tmp_path, capsys):
    root = write_acdc(tmp_path, n_patients=4)
    patients = root / "database" / "training"
    truncated = patients / "patient001" / "patient001_frame01_gt.nii.gz"  # ED is frame 1
    truncated.write_bytes(truncated.read_bytes()[:100])
    write_nifti(
        patients / "patient002" / "patient002_frame01_gt.nii.gz", np.zeros((5, 5, 4), np.uint8)
    )  # shape mismatch
    write_nifti(
        patients / "patient003" / "patient003_frame01_gt.nii.gz", np.full((20, 18, 4), 7, np.uint8)
    )  # not in the map
    assert main(["data", "check", "--dataset", "acdc", "--root", str(root)]) == 1  # every file, by default
    out = capsys.readouterr().out
    assert f"{truncated}: expected a NIfTI-1 or NIfTI-2 header; found an unreadable or truncated file" in out
    assert "patient002_frame01_gt.nii.gz: label shape (5, 5, 4) does not match image shape (20, 18, 4)" in out
    assert "patient003_frame01_gt.nii.gz: label values [7] are outside the label map [0, 1, 2, 3]" in out
    assert "3 problem(s):" in out


def test_command_line_process_refuses_a_wrong_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    result = subprocess.run(
        [sys.executable, "-m", "common", "data", "check", "--dataset", "busi", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "expected: Dataset_BUSI_with_GT/{benign,malignant,normal}/'benign (1).png'" in result.stderr
    assert "holds notes.txt" in result.stderr


def test_every_file_is_read_by_default_and_sample_is_the_quick_look(tmp_path, capsys):
    """A label file cut short inside its voxel data (header intact) is found by the default full read; a sample
    of one file says it is a sample and misses it."""
    root = write_acdc(tmp_path, n_patients=10)
    truncated = root / "database" / "training" / "patient007" / "patient007_frame01_gt.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:-30])

    assert main(["data", "check", "--dataset", "acdc", "--root", str(root)]) == 1
    captured = capsys.readouterr()
    assert f"{truncated}: the header declares 20 x 18 x 4 voxels" in captured.out and "truncated" in captured.out
    assert "reading files" in captured.err  # the progress bar

    assert main(["data", "check", "--dataset", "acdc", "--root", str(root), "--sample", "1"]) == 0
    assert "1 of 20 label files, a random sample" in capsys.readouterr().out
