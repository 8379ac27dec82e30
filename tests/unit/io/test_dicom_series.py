"""DICOM series reading: real volumes written as shuffled series, real pydicom-data files, bad folders."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from miniature_layouts import nimare_template, write_dicom_series
from pydicom.data import get_testdata_file

from common.io.dicom_series import DicomSeriesError, list_dicom_series, read_dicom_series
from common.io.volumes import load_volume


@pytest.fixture(scope="module")
def mni_t1() -> nib.Nifti1Image:
    """The real MNI152 T1 (2 mm, RAS, int16) from the nimare wheel."""
    return nib.load(nimare_template("tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"))


@pytest.fixture(scope="module")
def mni_series(tmp_path_factory, mni_t1):
    """The MNI T1 written as a CT-like series (intercept -1024) in shuffled file order."""
    folder = tmp_path_factory.mktemp("mni_dicom")
    values = np.asanyarray(mni_t1.dataobj).astype(np.float64)
    files = write_dicom_series(folder, values, mni_t1.affine, intercept=-1024.0, modality="CT")
    return folder, files


def test_series_reads_back_to_the_nifti_array_and_affine(mni_series, mni_t1):
    folder, files = mni_series
    assert sorted(p.name for p in files) != [p.name for p in files]  # file order does not reveal slice order
    series = read_dicom_series(folder)
    np.testing.assert_array_equal(series.array, mni_t1.get_fdata())
    np.testing.assert_allclose(series.affine, mni_t1.affine, atol=1e-4)
    assert series.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert np.all(np.diff(series.positions) > 0)
    assert list(series.files) == files  # the writer returns files in slice order
    assert series.modality == "CT" and len(set(series.sop_instance_uids)) == mni_t1.shape[2]


def test_load_volume_on_a_folder_gives_the_same_volume(mni_series, mni_t1):
    volume = load_volume(mni_series[0])
    np.testing.assert_array_equal(volume.array, mni_t1.get_fdata())
    np.testing.assert_allclose(volume.affine, mni_t1.affine, atol=1e-4)


def test_left_handed_volume_reads_back_to_the_same_anatomy(tmp_path):
    mask = nib.load(nimare_template("MNI152_2x2x2_brainmask.nii.gz"))  # LAS: the slice normal points inferior
    assert nib.aff2axcodes(mask.affine) == ("L", "A", "S")
    write_dicom_series(tmp_path, mask.get_fdata(), mask.affine)
    series = read_dicom_series(tmp_path)
    ours = nib.as_closest_canonical(nib.Nifti1Image(series.array, series.affine))
    theirs = nib.as_closest_canonical(mask)
    np.testing.assert_array_equal(ours.get_fdata(), theirs.get_fdata())
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-4)


def test_two_series_in_one_folder(tmp_path, mni_t1):
    values = np.asanyarray(mni_t1.dataobj)[:, :, :60].astype(np.float64)
    small = values[:, :, 20:30]
    write_dicom_series(tmp_path, values, mni_t1.affine, series_uid="1.2.826.0.1.1", prefix="A")
    shifted = mni_t1.affine.copy()
    shifted[2, 3] += 40.0
    write_dicom_series(tmp_path, small, shifted, series_uid="1.2.826.0.1.2", prefix="B", shuffle_seed=1)
    assert {uid: len(files) for uid, files in list_dicom_series(tmp_path).items()} == {
        "1.2.826.0.1.1": 60,
        "1.2.826.0.1.2": 10,
    }

    largest = read_dicom_series(tmp_path)
    assert largest.series_uid == "1.2.826.0.1.1" and largest.array.shape[2] == 60
    assert "largest" in largest.selection
    assert "not read: 1.2.826.0.1.2 (MR, 'miniature', 10 images)" in largest.selection

    chosen = read_dicom_series(tmp_path, series_uid="1.2.826.0.1.2")
    np.testing.assert_array_equal(chosen.array, small)
    np.testing.assert_allclose(chosen.affine, shifted, atol=1e-4)

    with pytest.raises(
        DicomSeriesError,
        match=r"no image series with SeriesInstanceUID 9.9.*1.2.826.0.1.1 \(MR, 'miniature', 60 images\)",
    ):
        read_dicom_series(tmp_path, series_uid="9.9")


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR2_UNCR.dcm"])
def test_pydicom_data_files_load_with_rescaled_values(tmp_path, name):
    source = get_testdata_file(name)
    shutil.copy(source, tmp_path / "slice.dcm")
    (tmp_path / "notes.txt").write_text("not a DICOM file")
    dataset = pydicom.dcmread(source)
    expected = dataset.pixel_array.astype(np.float64) * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    series = read_dicom_series(tmp_path)
    assert series.array.shape == (dataset.Columns, dataset.Rows, 1)
    np.testing.assert_allclose(series.array[:, :, 0].T, expected, rtol=1e-6)
    position = np.diag([-1, -1, 1]) @ np.asarray(dataset.ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(series.affine[:3, 3], position, atol=1e-4)
    if name == "CT_small.dcm":  # real Hounsfield units: air far below zero
        assert series.array.min() < -500 and dataset.RescaleIntercept == -1024


def test_missing_slice_is_refused_with_positions_and_files(tmp_path):
    values = np.arange(4 * 3 * 6, dtype=float).reshape(4, 3, 6)
    write_dicom_series(tmp_path, values, np.diag([1.0, 1.0, 2.5, 1.0]), skip_slices=(3,))
    with pytest.raises(
        DicomSeriesError,
        match=r"step 5\.000 mm between 5\.000 mm \(IM\d{4}\.dcm\) and 10\.000 mm \(IM\d{4}\.dcm\), "
        r"about 1 missing slice",
    ):
        read_dicom_series(tmp_path)
    with pytest.warns(UserWarning, match="uneven slice spacing"):
        series = read_dicom_series(tmp_path, allow_irregular=True)
    np.testing.assert_array_equal(series.array, values[:, :, [0, 1, 2, 4, 5]])
    assert series.spacing[2] == pytest.approx(2.5)


def test_truncated_file_is_named(tmp_path):
    files = write_dicom_series(tmp_path, np.ones((8, 8, 3)), np.eye(4))
    files[1].write_bytes(files[1].read_bytes()[:-40])
    with pytest.raises(DicomSeriesError, match=f"{files[1].name}: unreadable pixel data"):
        read_dicom_series(tmp_path)


def test_folder_without_dicom_images(tmp_path):
    with pytest.raises(DicomSeriesError, match="expected DICOM images with positions.*found none"):
        read_dicom_series(tmp_path)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DicomSeriesError, match="found none"):
        read_dicom_series(tmp_path)


def test_two_slices_at_one_position_are_refused(tmp_path):
    values = np.zeros((6, 5, 3))
    write_dicom_series(tmp_path, values, np.eye(4), series_uid="1.2.3", prefix="A")
    write_dicom_series(tmp_path, values[:, :, :1], np.eye(4), series_uid="1.2.3", prefix="B")  # a repeated acquisition
    with pytest.raises(
        DicomSeriesError, match=r"two slices at position 0.000 mm along the normal: A\d{4}\.dcm and B0000\.dcm"
    ):
        read_dicom_series(tmp_path)
