"""Volume reading and the volume-to-slices path, on the real MNI152 volumes shipped in packages."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from miniature_layouts import nimare_template, write_nifti

from common.data import get_dataset
from common.io.volumes import VolumeReadError, display_to_ras_axial, load_volume, ras_axial_to_display, reorient
from common.training.datasets import VolumeSliceDataset, training_dataset
from common.transforms.pipelines import volume_transforms
from common.transforms.slicing import AxialSlicesd


@pytest.fixture(scope="module")
def mni_t1() -> nib.Nifti1Image:
    return nib.load(nimare_template("tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_simpleitk_formats_match_nibabel(tmp_path, mni_t1, suffix):
    """A NIfTI converted by SimpleITK reads back with nibabel's array and affine."""
    path = tmp_path / f"mni{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(nimare_template("tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"))), str(path))
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.array, np.asanyarray(mni_t1.dataobj))
    np.testing.assert_allclose(volume.affine, mni_t1.affine, atol=1e-4)


def test_reorient_matches_nibabel_canonical():
    mask = nib.load(nimare_template("MNI152_2x2x2_brainmask.nii.gz"))  # stored LAS
    volume = reorient(load_volume(nimare_template("MNI152_2x2x2_brainmask.nii.gz")), "RAS")
    canonical = nib.as_closest_canonical(mask)
    np.testing.assert_array_equal(volume.array, np.asanyarray(canonical.dataobj))
    np.testing.assert_allclose(volume.affine, canonical.affine)


def test_display_layout_puts_anterior_up_and_patient_right_left():
    ras = np.zeros((5, 4))  # axes X (index grows towards the patient's right), Y (towards anterior)
    ras[4, 3] = 1  # the rightmost, most anterior voxel
    display = ras_axial_to_display(ras)
    assert display.shape == (4, 5) and display[0, 0] == 1  # top row = anterior, left column = patient right
    np.testing.assert_array_equal(display_to_ras_axial(display), ras)
    np.testing.assert_array_equal(ras_axial_to_display(torch.as_tensor(ras)).numpy(), display)


def test_truncated_and_missing_volumes_are_named(tmp_path, mni_t1):
    path = tmp_path / "cut.nii.gz"
    data = gzip.compress(mni_t1.to_bytes())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        VolumeReadError,
        match=r"cut.nii.gz: the header declares 91 x 109 x 91 voxels \(1805610 bytes "
        r"with the header\); the file expands to \d+ \(truncated",
    ):
        load_volume(path)
    with pytest.raises(VolumeReadError, match="absent.nii.gz: no such file"):
        load_volume(tmp_path / "absent.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VolumeReadError, match="notes.txt: not a volume file"):
        load_volume(tmp_path / "notes.txt")


@pytest.fixture(scope="module")
def mni_nnunet(tmp_path_factory):
    """The real MNI T1 in a two-case nnU-Net layout, labelled with the brain mask (LAS stored, one flipped copy)."""
    folder = tmp_path_factory.mktemp("mni") / "Dataset900_MNI"
    t1 = nib.load(nimare_template("tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"))
    brain = nib.load(nimare_template("tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz"))
    t1_data, brain_data = np.asanyarray(t1.dataobj), np.asanyarray(brain.dataobj)
    write_nifti(folder / "imagesTr" / "mni_000_0000.nii.gz", t1_data, t1.affine)
    write_nifti(folder / "labelsTr" / "mni_000.nii.gz", brain_data, brain.affine)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = t1.shape[0] - 1
    las_affine = t1.affine @ flip  # same anatomy, x axis stored right-to-left
    write_nifti(folder / "imagesTr" / "mni_001_0000.nii.gz", t1_data[::-1], las_affine)
    write_nifti(folder / "labelsTr" / "mni_001.nii.gz", brain_data[::-1], las_affine)
    (folder / "dataset.json").write_text(
        '{"channel_names": {"0": "T1"}, "labels": {"background": 0, "brain": 1}, "file_ending": ".nii.gz"}'
    )
    return folder, t1_data.astype(np.float32), brain_data


def test_volume_pipeline_orients_and_normalises_real_mri(mni_nnunet):
    folder, t1_data, brain_data = mni_nnunet
    reader = get_dataset("nnunet", root=folder)
    entries = reader.scan().cases
    ras = volume_transforms(reader, axcodes="RAS")(entries["mni_000"][0])
    las = volume_transforms(reader, axcodes="RAS")(entries["mni_001"][0])
    expected = (t1_data - t1_data.min()) / (t1_data.max() - t1_data.min())  # per-volume min-max (T1 is MRI)
    np.testing.assert_allclose(ras["image"][0].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(las["image"].numpy(), ras["image"].numpy())  # both brought to RAS
    np.testing.assert_array_equal(las["label"][0].numpy(), brain_data)
    display = volume_transforms(reader)(entries["mni_001"][0])  # the default: slices in display layout
    for k in (10, 40):
        np.testing.assert_array_equal(display["label"][0, ..., k].numpy(), ras_axial_to_display(brain_data[:, :, k]))


def test_axial_slices_all_and_foreground(mni_nnunet):
    folder, t1_data, brain_data = mni_nnunet
    volume = volume_transforms(get_dataset("nnunet", root=folder))(
        get_dataset("nnunet", root=folder).scan().cases["mni_000"][0]
    )
    slices = AxialSlicesd(mode="all")(volume)
    assert len(slices) == t1_data.shape[2] and [s["slice"] for s in slices] == list(range(t1_data.shape[2]))
    k = 40
    np.testing.assert_array_equal(slices[k]["label"][0].numpy(), ras_axial_to_display(brain_data[:, :, k]))
    assert slices[k]["image"].shape == (1, t1_data.shape[1], t1_data.shape[0]) and slices[k]["case"] == "mni_000"

    drawn = AxialSlicesd(mode="foreground", num_samples=50, foreground_prob=1.0)
    drawn.set_random_state(0)
    with_brain = set(np.flatnonzero(brain_data.reshape(-1, brain_data.shape[2]).any(0)).tolist())
    picks = [s["slice"] for s in drawn(volume)]
    assert len(picks) == 50 and set(picks) <= with_brain and len(set(picks)) > 10
    assert set(range(t1_data.shape[2])) - with_brain  # the test is meaningful: some slices hold no brain


def test_volume_slice_dataset_reads_each_volume_once(mni_nnunet):
    folder, t1_data, _ = mni_nnunet
    reader = get_dataset("nnunet", root=folder)
    datalist = [e for entries in reader.scan().cases.values() for e in entries]
    loads = []
    transform = volume_transforms(reader)

    def counting_transform(entry):
        loads.append(entry["case"])
        return transform(entry)

    dataset = VolumeSliceDataset(datalist, counting_transform, AxialSlicesd(mode="all"), volumes_in_memory=1, seed=3)
    first = [(s["case"], s["slice"]) for s in dataset]
    assert sorted(loads) == ["mni_000", "mni_001"]
    assert len(first) == 2 * t1_data.shape[2] and len(set(first)) == len(first)
    second = [(s["case"], s["slice"]) for s in dataset]
    assert second != first and sorted(second) == sorted(first)  # reshuffled each epoch
    dataset.epoch = 0  # the shuffle is seeded by (seed, epoch, worker)
    assert [(s["case"], s["slice"]) for s in dataset] == first  # and reproducible


def test_training_dataset_yields_network_sized_slices(mni_nnunet):
    folder, _, _ = mni_nnunet
    reader = get_dataset("nnunet", root=folder)
    dataset = training_dataset(
        reader, reader.datalists()["train"] + reader.datalists()["validation"], spatial_size=(64, 64)
    )
    item = next(iter(dataset))
    assert item["image"].shape == (1, 64, 64) and item["label"].shape == (1, 64, 64)
    assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0}


def test_volume_slices_are_shuffled_across_the_whole_split_by_default(mni_nnunet):
    """The authors shuffle pre-cut slices over the whole training split: by default the two volumes' slices
    interleave; with ``volumes_in_memory=1`` each volume's slices come as one block."""
    folder, t1_data, _ = mni_nnunet
    reader = get_dataset("nnunet", root=folder)
    datalist = [e for entries in reader.scan().cases.values() for e in entries]
    whole = [s["case"] for s in VolumeSliceDataset(datalist, volume_transforms(reader), AxialSlicesd(mode="all"))]
    grouped = [
        s["case"]
        for s in VolumeSliceDataset(datalist, volume_transforms(reader), AxialSlicesd(mode="all"), volumes_in_memory=1)
    ]
    changes = lambda cases: sum(a != b for a, b in zip(cases, cases[1:]))  # noqa: E731
    assert changes(grouped) == 1 and changes(whole) > 10 and len(whole) == 2 * t1_data.shape[2]
