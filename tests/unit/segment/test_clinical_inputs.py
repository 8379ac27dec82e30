"""Clinical inputs without surprises: tilted and enhanced multi-frame DICOM, several series in one folder, sources
that cannot take a SEG, hostile and broken volume files, and a folder of good and bad cases run in one command.

The corpus is written by the tests (``clinical_corpus``); volumes are a few 64 x 64 slices. Geometry checks use the
exact threshold network of ``test_segment`` (label 1 where the CT-windowed intensity exceeds 0.5, i.e. 75 HU).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from clinical_corpus import tilted_affine, write_enhanced_ct, write_hostile_corpus
from miniature_layouts import write_dicom_series
from segment_fixtures import IntensityThreshold, copy_bundle

from common.__main__ import main
from common.io.dicom_series import DicomSeriesError, read_dicom_series
from common.io.staging import publish, staged_folder
from common.io.volumes import LPS_TO_RAS, VolumeReadError, load_volume, volume_shape
from common.segment.cases import segment_cases
from common.segment.segmenter import SegmentOptions

SHAPE = (64, 64, 5)
TILT = 12.0


@pytest.fixture(scope="module")
def ct_values() -> np.ndarray:
    """A (64, 64, 5) CT-like volume in HU: a bright disc that moves from slice to slice, on soft tissue."""
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    rng = np.random.default_rng(1)
    volume = np.stack([np.where((x - 20 - 4 * k) ** 2 + (y - 30) ** 2 < 100, 300.0, 0.0) for k in range(SHAPE[2])], -1)
    return volume + rng.integers(-40, 40, SHAPE)


@pytest.fixture(scope="module")
def ct_bundle(tmp_path_factory) -> Path:
    """The Synapse CT bundle at 64 x 64 with a small random network (pvt_v2_b0) for command-line runs."""
    return copy_bundle(tmp_path_factory.mktemp("bundles"), "pvt_gdla_synapse_segmentation", weights=True)


def positions_of(files: list[Path]) -> np.ndarray:
    """ImagePositionPatient (LPS) of each file."""
    return np.asarray(
        [[float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient] for f in files]
    )


def lps_slice_positions(affine: np.ndarray, n: int) -> np.ndarray:
    """Where a RAS ``affine`` puts voxel (0, 0, k), in LPS, for k < n."""
    return np.stack([(LPS_TO_RAS @ affine @ [0, 0, k, 1])[:3] for k in range(n)])


# ----------------------------------------------------------------------------- tilted and non-uniform series


def test_tilted_series_affine_is_held_to_the_positions(tmp_path, ct_values):
    affine = tilted_affine(SHAPE[:2], (0.7, 0.7, 5.0), TILT)
    files = write_dicom_series(tmp_path, ct_values, affine, intercept=-1024.0, modality="CT")

    series = read_dicom_series(tmp_path)

    np.testing.assert_allclose(lps_slice_positions(series.affine, SHAPE[2]), positions_of(files), atol=1e-4)
    np.testing.assert_allclose(series.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(series.array, ct_values)
    assert series.tilt_degrees == pytest.approx(TILT, abs=1e-6)
    # the slice normal is still the scanner's z axis: projecting the positions on it (the old slice vector) would
    # put the last slice 4 * 5 mm * (1 / cos 12 deg - 1) = 0.45 mm off along the tilted axis
    assert np.linalg.norm(series.affine[:3, 2]) == pytest.approx(5.0 / np.cos(np.radians(TILT)))


def test_positions_off_a_line_are_refused_with_the_image(tmp_path, ct_values):
    files = write_dicom_series(tmp_path, ct_values, np.diag([0.7, 0.7, 5.0, 1.0]), modality="CT")
    moved = pydicom.dcmread(files[2])
    moved.ImagePositionPatient[0] = float(moved.ImagePositionPatient[0]) + 0.8  # one slice shifted sideways
    moved.save_as(files[2])
    with pytest.raises(DicomSeriesError, match=rf"positions do not lie on a line: {files[2].name} is 0\.800 mm"):
        read_dicom_series(tmp_path)


# ----------------------------------------------------------------------------- enhanced multi-frame


@pytest.mark.parametrize("per_frame_orientation", [False, True])
def test_enhanced_ct_equals_its_single_frame_twin(tmp_path, ct_values, per_frame_orientation):
    affine = tilted_affine(SHAPE[:2], (0.7, 0.7, 2.5), TILT)
    write_dicom_series(tmp_path / "single", ct_values, affine, intercept=-1024.0, modality="CT")
    # frames stored out of slice order, each with its own rescale (slope 0.5 halves the stored step)
    write_enhanced_ct(
        tmp_path / "enhanced" / "ct.dcm",
        ct_values,
        affine,
        slopes=[1, 0.5, 1, 0.5, 1],
        intercepts=[-1024, -1000, 0, -1024, -2000],
        frame_order=[3, 0, 4, 1, 2],
        per_frame_orientation=per_frame_orientation,
    )

    single, enhanced = read_dicom_series(tmp_path / "single"), read_dicom_series(tmp_path / "enhanced")

    np.testing.assert_array_equal(enhanced.array, single.array)
    np.testing.assert_allclose(enhanced.affine, single.affine, atol=1e-6)
    assert enhanced.spacing == pytest.approx(single.spacing)
    assert enhanced.is_multiframe and not single.is_multiframe
    assert enhanced.frame_numbers == (2, 4, 5, 1, 3)  # frame f holds slice frame_order[f - 1]
    assert enhanced.modality == "CT" and enhanced.series_in_folder == {enhanced.series_uid: 5}


def test_highdicom_legacy_converted_ct_equals_its_source(tmp_path, ct_values):
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    files = write_dicom_series(tmp_path / "single", ct_values, affine, intercept=-1024.0, modality="CT")
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in files],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    (tmp_path / "converted").mkdir()
    converted.save_as(tmp_path / "converted" / "ct.dcm")

    single, multi = read_dicom_series(tmp_path / "single"), read_dicom_series(tmp_path / "converted")

    np.testing.assert_array_equal(multi.array, single.array)
    np.testing.assert_allclose(multi.affine, single.affine, atol=1e-6)
    assert multi.is_multiframe


def test_multiframe_without_positions_is_named_in_the_refusal(tmp_path, ct_values):
    path = write_enhanced_ct(tmp_path / "ct.dcm", ct_values, np.eye(4))
    dataset = pydicom.dcmread(path)
    for item in dataset.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
    dataset.save_as(path)
    with pytest.raises(DicomSeriesError, match="found none .*ct.dcm: a multi-frame object without plane positions"):
        read_dicom_series(tmp_path)
    write_dicom_series(tmp_path, ct_values, np.eye(4), modality="CT")  # a usable series beside it
    assert read_dicom_series(tmp_path).set_aside == (
        "ct.dcm: a multi-frame object without plane positions / orientations (frame 1)",
    )


# ----------------------------------------------------------------------------- segment: SEG, series, fallbacks


def seg_frames_by_source(seg: pydicom.Dataset) -> dict[tuple[str, int | None], tuple[np.ndarray, np.ndarray]]:
    """(source SOP instance, source frame) -> (SEG frame [rows, columns], the frame's LPS position)."""
    frames = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
    found = {}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        number = int(source.ReferencedFrameNumber) if "ReferencedFrameNumber" in source else None
        position = np.asarray([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
        found[(source.ReferencedSOPInstanceUID, number)] = (frame, position)
    return found


def test_tilted_series_seg_frames_lie_on_the_source_images_and_the_nifti(tmp_path, ct_bundle, ct_values):
    affine = tilted_affine(SHAPE[:2], (0.7, 0.7, 5.0), TILT)
    write_dicom_series(tmp_path / "tilted", ct_values, affine, intercept=-1024.0, modality="CT")
    series = read_dicom_series(tmp_path / "tilted")

    results = segment_cases(
        ct_bundle,
        tmp_path / "tilted",
        tmp_path / "out",
        SegmentOptions(network=IntensityThreshold(), device="cpu"),
        progress=False,
    )

    assert results[0].status == "ok" and any("gantry tilt 12.00 degrees" in w for w in results[0].warnings)
    mask = nib.load(tmp_path / "out" / "tilted_seg.nii.gz")
    np.testing.assert_allclose(mask.affine, affine, atol=1e-4)
    labels = np.asarray(mask.dataobj)
    np.testing.assert_array_equal(labels, ct_values > 75)
    nifti_positions = lps_slice_positions(mask.affine, SHAPE[2])
    found = seg_frames_by_source(pydicom.dcmread(tmp_path / "out" / "tilted_seg.dcm"))
    assert len(found) == int((labels.reshape(-1, SHAPE[2]).any(axis=0)).sum())  # highdicom omits empty frames
    for k, uid in enumerate(series.sop_instance_uids):
        if (uid, None) in found:
            frame, position = found[(uid, None)]
            np.testing.assert_array_equal(frame, labels[:, :, k].T)
            np.testing.assert_allclose(position, nifti_positions[k], atol=1e-4)


def test_enhanced_ct_gets_a_seg_on_its_frames_and_the_twins_nifti(tmp_path, ct_bundle, ct_values):
    affine = tilted_affine(SHAPE[:2], (0.7, 0.7, 2.5), TILT)
    write_dicom_series(tmp_path / "cases" / "single", ct_values, affine, intercept=-1024.0, modality="CT")
    source = write_enhanced_ct(
        tmp_path / "cases" / "enhanced" / "ct.dcm",
        ct_values,
        affine,
        intercepts=[-1024.0] * 5,
        frame_order=[4, 2, 0, 1, 3],
    )

    results = segment_cases(
        ct_bundle,
        tmp_path / "cases",
        tmp_path / "out",
        SegmentOptions(network=IntensityThreshold(), device="cpu"),
        progress=False,
    )

    assert [(r.case, r.status) for r in results] == [("enhanced", "ok"), ("single", "ok")]
    single = nib.load(tmp_path / "out" / "single_seg.nii.gz")
    enhanced = nib.load(tmp_path / "out" / "enhanced_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(enhanced.dataobj), np.asarray(single.dataobj))
    np.testing.assert_allclose(enhanced.affine, single.affine, atol=1e-6)
    labels = np.asarray(enhanced.dataobj)
    seg = pydicom.dcmread(tmp_path / "out" / "enhanced_seg.dcm")
    source_uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source_uid
    frame_order = [4, 2, 0, 1, 3]
    found = seg_frames_by_source(seg)
    assert found and all(uid == source_uid for uid, _ in found)
    for (_, number), (frame, position) in found.items():
        k = frame_order[number - 1]  # the slice the source frame holds
        np.testing.assert_array_equal(frame, labels[:, :, k].T)
        np.testing.assert_allclose(position, lps_slice_positions(enhanced.affine, 5)[k], atol=1e-4)


def test_two_series_default_is_printed_and_reported_and_series_picks_the_other(tmp_path, ct_bundle, ct_values, capsys):
    folder = tmp_path / "study"
    affine = np.diag([0.7, 0.7, 5.0, 1.0])
    write_dicom_series(folder, ct_values, affine, modality="CT", series_uid="1.2.826.0.9.1", prefix="A")
    write_dicom_series(folder, ct_values[:, :, :2], affine, modality="CT", series_uid="1.2.826.0.9.2", prefix="B")

    assert (
        main(
            [
                "segment",
                "--bundle",
                str(ct_bundle),
                "--input",
                str(folder),
                "--output",
                str(tmp_path / "out"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )

    printed = capsys.readouterr()
    expected = "reading the largest, 1.2.826.0.9.1 (CT, 'miniature', 5 images); not read: 1.2.826.0.9.2"
    assert expected in printed.out and expected in printed.err  # the final report, and as the case runs
    report = next(csv.DictReader(open(tmp_path / "out" / "report.csv")))
    assert expected in report["warnings"] and "--series UID" in report["warnings"]
    assert nib.load(tmp_path / "out" / "study_seg.nii.gz").shape == SHAPE

    assert (
        main(
            [
                "segment",
                "--bundle",
                str(ct_bundle),
                "--input",
                str(folder),
                "--output",
                str(tmp_path / "o2"),
                "--device",
                "cpu",
                "--series",
                "1.2.826.0.9.2",
            ]
        )
        == 0
    )
    assert nib.load(tmp_path / "o2" / "study_seg.nii.gz").shape == (64, 64, 2)
    report = next(csv.DictReader(open(tmp_path / "o2" / "report.csv")))
    assert "reading the requested series 1.2.826.0.9.2" in report["warnings"]
    assert "also in the folder: 1.2.826.0.9.1" in report["warnings"]


def test_source_without_frame_of_reference_keeps_its_nifti_and_says_why_no_seg(tmp_path, ct_bundle, ct_values):
    files = write_dicom_series(tmp_path / "anonymised", ct_values, np.diag([0.7, 0.7, 5.0, 1.0]), modality="CT")
    for path in files:
        dataset = pydicom.dcmread(path)
        del dataset.FrameOfReferenceUID
        dataset.save_as(path)

    results = segment_cases(
        ct_bundle,
        tmp_path / "anonymised",
        tmp_path / "out",
        SegmentOptions(network=IntensityThreshold(), device="cpu"),
        progress=False,
    )

    assert results[0].status == "ok"
    assert results[0].warnings == [
        "no DICOM SEG written: the source series has no FrameOfReferenceUID (removed by an anonymiser?), which a SEG "
        "needs to lie on the source images; the NIfTI mask is written"
    ]
    np.testing.assert_array_equal(
        np.asarray(nib.load(tmp_path / "out" / "anonymised_seg.nii.gz").dataobj), ct_values > 75
    )
    assert not (tmp_path / "out" / "anonymised_seg.dcm").exists()


# ----------------------------------------------------------------------------- validation of volume files


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return write_hostile_corpus(tmp_path_factory.mktemp("hostile"))


def assert_plain_refusal(message: str, path: Path, expected: str) -> None:
    """One or two lines naming the file, with the expected text, and no library internals."""
    assert message.startswith(f"{path}: ") and expected in message, message
    assert len(message.splitlines()) <= 2 and "Traceback" not in message
    assert not any(token in message for token in (".cxx", ".h:", "0x", "itk::", "sitk::", "RuntimeError"))


@pytest.mark.parametrize(
    "name",
    [
        "nan",
        "rgb24",
        "singular",
        "huge_header",
        "huge_header_gz",
        "claims_1000_cubed",
        "zero_size",
        "truncated_nrrd",
        "truncated_nrrd_gz",
        "truncated_mha",
        "missing_raw",
        "time_series",
    ],
)
def test_bad_volume_files_are_refused_in_plain_words(hostile, name):
    path, expected = hostile[name]
    with pytest.raises(VolumeReadError) as refusal:
        load_volume(path)
    assert_plain_refusal(str(refusal.value), path, expected)


def test_two_d_files_are_one_slice_and_trailing_singletons_are_dropped(tmp_path):
    picture = np.arange(80 * 64, dtype=np.float32).reshape(80, 64)
    affine = np.diag([0.5, 0.6, 3.0, 1.0])
    nib.save(nib.Nifti1Image(picture, affine), tmp_path / "slice.nii.gz")
    image = sitk.GetImageFromArray(picture.T.copy())
    image.SetSpacing((0.5, 0.6))
    sitk.WriteImage(image, str(tmp_path / "slice.mha"))
    nib.save(nib.Nifti1Image(picture[:, :, None, None, None], affine), tmp_path / "vector.nii.gz")  # X x Y x 1 x 1 x 1

    for name in ("slice.nii.gz", "slice.mha", "vector.nii.gz"):
        volume = load_volume(tmp_path / name)
        assert volume.array.shape == (80, 64, 1), name
        np.testing.assert_array_equal(volume.array[:, :, 0], picture)
        assert volume.spacing[:2] == pytest.approx((0.5, 0.6))
    assert volume_shape(tmp_path / "vector.nii.gz") == (80, 64, 1)
    five_d = np.zeros((6, 5, 4, 1, 1), np.int16)
    nib.save(nib.Nifti1Image(five_d, affine), tmp_path / "itk_vector.nii.gz")
    assert load_volume(tmp_path / "itk_vector.nii.gz").array.shape == (6, 5, 4)


def test_a_failed_stage_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        with staged_folder(out) as staging:
            (staging / "case_seg.nii.gz").write_bytes(b"half")
            raise OSError("disk full")
    assert list(out.iterdir()) == []
    (out / "case_seg.nii.gz").write_bytes(b"old")
    with staged_folder(out) as staging:
        (staging / "case_seg.nii.gz").write_bytes(b"new")
        (staging / "case_overlay.png").write_bytes(b"png")
        moved = publish(staging, out, [staging / "case_seg.nii.gz"])
    assert moved == [out / "case_seg.nii.gz"] and (out / "case_seg.nii.gz").read_bytes() == b"new"
    assert sorted(p.name for p in out.iterdir()) == ["case_overlay.png", "case_seg.nii.gz"]


# ----------------------------------------------------------------------------- one command over good and bad cases


def test_folder_of_good_and_bad_cases_in_one_command(tmp_path, ct_bundle, ct_values, hostile, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    affine = tilted_affine(SHAPE[:2], (0.7, 0.7, 5.0), TILT)
    nib.save(nib.Nifti1Image(ct_values.astype(np.float32), np.diag([0.7, 0.7, 5.0, 1.0])), cases / "good.nii.gz")
    nib.save(
        nib.Nifti1Image(ct_values[:, :, 2].astype(np.float32), np.diag([0.7, 0.7, 5.0, 1.0])), cases / "flat.nii.gz"
    )  # 2-D: one slice
    write_dicom_series(cases / "tilted", ct_values, affine, intercept=-1024.0, modality="CT")
    write_enhanced_ct(cases / "enhanced" / "ct.dcm", ct_values, affine, intercepts=[-1024.0] * 5)
    write_enhanced_ct(
        cases / "no_frame_of_reference" / "ct.dcm",
        ct_values,
        affine,
        intercepts=[-1024.0] * 5,
        frame_of_reference=False,
    )
    bad = {
        name: hostile[name]
        for name in ("nan", "rgb24", "singular", "huge_header", "truncated_mha", "truncated_nrrd", "time_series")
    }
    for path, _ in bad.values():
        shutil.copy(path, cases / path.name)
    (cases / "empty_series").mkdir()
    (cases / "empty_series" / "notes.dcm").write_text("not DICOM")

    code = main(
        [
            "segment",
            "--bundle",
            str(ct_bundle),
            "--input",
            str(cases),
            "--output",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )

    assert code == 1
    printed = capsys.readouterr().out
    report = {row["case"]: row for row in csv.DictReader(open(tmp_path / "out" / "report.csv"))}
    good = ["enhanced", "flat", "good", "no_frame_of_reference", "tilted"]
    assert sorted(case for case, row in report.items() if row["status"] == "ok") == good
    for name, (path, expected) in bad.items():
        assert report[name]["status"] == "failed"
        assert_plain_refusal(report[name]["error"], cases / path.name, expected)
        assert f"{cases / path.name}: " in printed
    assert report["empty_series"]["status"] == "failed" and "found none" in report["empty_series"]["error"]
    assert (
        "no DICOM SEG written: the source series has no FrameOfReferenceUID"
        in report["no_frame_of_reference"]["warnings"]
    )
    assert f"5 of {len(report)} case(s) segmented, {len(report) - 5} failed" in printed
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    expected_files = {f"{case}_{kind}" for case in good for kind in ("seg.nii.gz", "overlay.png")}
    expected_files |= {"tilted_seg.dcm", "enhanced_seg.dcm", "report.csv", "volumes.csv"}
    assert set(written) == expected_files  # failed cases left nothing, and no staging folder remains
    assert nib.load(tmp_path / "out" / "flat_seg.nii.gz").shape == (64, 64, 1)


def test_valid_gzip_in_several_members_passes_the_size_check(tmp_path, ct_values):
    """bgzip and some PACS exports write .nii.gz as several gzip members: the trailer then gives only the last
    member's size, so the check counts the whole stream (and the file reads as usual)."""
    import gzip

    raw = nib.Nifti1Image(ct_values.astype(np.int16), np.diag([0.7, 0.7, 5.0, 1.0])).to_bytes()
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:30000]) + gzip.compress(raw[30000:]))
    np.testing.assert_array_equal(load_volume(path).array, ct_values.astype(np.int16))
    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:30000]))  # the last member lost
    with pytest.raises(VolumeReadError, match=r"the file expands to 30000 \(truncated"):
        load_volume(path)
