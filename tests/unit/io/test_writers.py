"""Segmentation writers: NIfTI, PNG masks, overlay previews, volume tables and DICOM SEG."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from common.io import writers
from common.io.dicom_seg import read_source_datasets, write_dicom_seg
from common.io.dicom_series import read_dicom_series
from common.io.lazy_volumes import open_lazy_volume
from common.io.mask_saving import SaveMask3Dd
from common.io.previews import (
    GAP,
    PANEL_SHORT_SIDE,
    label_colors,
    preview_slices,
    write_image_overlay,
    write_volume_overlay,
)
from common.io.tables import write_csv
from common.io.writers import structure_volumes, write_nifti, write_png_mask


def oblique_affine() -> np.ndarray:
    """Anisotropic voxels (0.7, 0.9, 2.5 mm) rotated 30 degrees about z, with an offset."""
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = (-90.0, 12.5, 40.0)
    return affine


def test_nifti_round_trip_keeps_labels_and_affine(tmp_path):
    labels = np.random.default_rng(0).integers(0, 9, size=(12, 10, 6)).astype(np.int64)
    path = write_nifti(torch.from_numpy(labels), oblique_affine(), tmp_path / "out" / "case.nii.gz")
    image = nib.load(path)
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_allclose(image.affine, oblique_affine(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels)
    assert [p.name for p in path.parent.iterdir()] == ["case.nii.gz"]  # no temporary left behind


def test_nifti_refuses_bad_labels_and_names(tmp_path):
    with pytest.raises(ValueError, match="integers 0..255"):
        write_nifti(np.full((2, 2, 2), 0.5), np.eye(4), tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="integers 0..255"):
        write_nifti(np.full((2, 2, 2), 300), np.eye(4), tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="must end with .nii"):
        write_nifti(np.zeros((2, 2, 2)), np.eye(4), tmp_path / "a.png")
    with pytest.raises(ValueError, match="invertible"):
        write_nifti(np.zeros((2, 2, 2)), np.zeros((4, 4)), tmp_path / "a.nii")
    assert not list(tmp_path.iterdir())


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_nifti(np.ones((3, 3, 3)), np.eye(4), tmp_path / "case.nii.gz")
    before = path.read_bytes()

    def broken_save(image, filename):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(writers.nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(np.zeros((3, 3, 3)), np.eye(4), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["case.nii.gz"]


def simpleitk_nifti(series: Path, path: Path) -> nib.Nifti1Image:
    """The series converted as MONAI Label's DICOMweb datastore converts it (SimpleITK's series reader)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    sitk.WriteImage(reader.Execute(), str(path))
    return nib.load(path)


def test_volume_nifti_of_a_dicom_series_is_simpleitks_conversion(tmp_path):
    """A CT series (oblique, Hounsfield units through a rescale intercept) becomes the int16 NIfTI SimpleITK
    makes of it, voxel for voxel on the same grid, written a few slices at a time."""
    from miniature_layouts import write_dicom_series

    hounsfield = np.random.default_rng(0).integers(-1024, 2000, size=(14, 11, 9)).astype(np.float64)
    write_dicom_series(tmp_path / "series", hounsfield, oblique_affine(), intercept=-1024.0, modality="CT")
    path = writers.write_volume_nifti(open_lazy_volume(tmp_path / "series"), tmp_path / "ct.nii", slab_slices=4)
    ours, theirs = nib.load(path), simpleitk_nifti(tmp_path / "series", tmp_path / "sitk.nii")
    assert ours.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), hounsfield)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii", "series", "sitk.nii"]


def test_volume_nifti_keeps_fractional_values_and_refuses_other_names(tmp_path):
    from miniature_layouts import write_dicom_series

    values = np.arange(5 * 4 * 3, dtype=np.float64).reshape(5, 4, 3) * 0.5
    write_dicom_series(tmp_path / "series", values, np.eye(4), slope=0.5)
    volume = open_lazy_volume(tmp_path / "series")
    image = nib.load(writers.write_volume_nifti(volume, tmp_path / "mr.nii", slab_slices=2))
    assert image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(image.dataobj), values)
    with pytest.raises(ValueError, match="ending .nii"):
        writers.write_volume_nifti(volume, tmp_path / "mr.nii.gz")


def test_volume_nifti_is_written_a_slab_at_a_time(tmp_path):
    import tracemalloc

    from miniature_layouts import write_dicom_series

    write_dicom_series(tmp_path / "series", np.zeros((128, 128, 96)), np.eye(4), intercept=-1024.0, modality="CT")
    volume = open_lazy_volume(tmp_path / "series")
    whole = 128 * 128 * 96 * 4  # the volume as float32, as the series reader returns it
    tracemalloc.start()
    try:
        writers.write_volume_nifti(volume, tmp_path / "ct.nii", slab_slices=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < whole / 4, f"{peak} bytes allocated at the peak for a {whole}-byte volume"
    assert np.asarray(nib.load(tmp_path / "ct.nii").dataobj).shape == (128, 128, 96)


@pytest.mark.parametrize(
    ("source", "written"),
    [
        ("ct 1.nii.gz", "ct 1_seg.nii.gz"),
        ("scan.v2.mha", "scan.v2_seg.nii.gz"),
        ("series_0042", "series_0042_seg.nii.gz"),
    ],
)
def test_volume_mask_saver_names_outputs_as_segment_does(tmp_path, source, written):
    labels = np.random.default_rng(1).integers(0, 4, size=(1, 9, 7, 5)).astype(np.uint8)
    mask = MetaTensor(torch.from_numpy(labels), affine=torch.as_tensor(oblique_affine()))
    mask.meta["filename_or_obj"] = str(tmp_path / "inputs" / source)
    data = SaveMask3Dd("pred", tmp_path / "out")({"pred": mask})
    assert data["pred"] is mask
    assert [p.name for p in (tmp_path / "out").iterdir()] == [written]
    image = nib.load(tmp_path / "out" / written)
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_allclose(image.affine, oblique_affine(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels[0])


def test_volume_mask_saver_refuses_what_is_not_one_label_map(tmp_path):
    save = SaveMask3Dd("pred", tmp_path)
    two_channels = MetaTensor(torch.zeros(2, 4, 4, 4), affine=torch.eye(4), meta={"filename_or_obj": "/in/a.nii"})
    with pytest.raises(ValueError, match=r"/in/a.nii: expected a \[1, X, Y, Z\] label map, found \(2, 4, 4, 4\)"):
        save({"pred": two_channels})
    fractional = MetaTensor(torch.full((1, 4, 4, 4), 0.5), affine=torch.eye(4), meta={"filename_or_obj": "/in/b.nii"})
    with pytest.raises(ValueError, match="integers 0..255"):
        save({"pred": fractional})
    with pytest.raises(ValueError, match="filename_or_obj and affine"):
        save({"pred": torch.zeros(1, 4, 4, 4)})
    assert not list(tmp_path.iterdir())


def test_png_masks_store_labels_or_binary_255(tmp_path):
    labels = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(write_png_mask(labels, tmp_path / "l.png"))), labels)
    binary = labels == 1
    stored = np.asarray(Image.open(write_png_mask(binary, tmp_path / "b.png", values="binary255")))
    np.testing.assert_array_equal(stored, binary * 255)
    with pytest.raises(ValueError, match="needs a 0/1 mask"):
        write_png_mask(labels, tmp_path / "x.png", values="binary255")
    with pytest.raises(ValueError, match=r"expected a 2-D mask \[H, W\]"):
        write_png_mask(labels[None], tmp_path / "x.png")


def _has_swatch(picture: np.ndarray, color: np.ndarray, side: int = 10) -> bool:
    """Whether ``picture`` holds a ``side`` x ``side`` square of exactly ``color``."""
    exact = (picture == color).all(axis=-1).astype(int)
    runs = np.cumsum(np.cumsum(exact, axis=0), axis=1)  # summed-area table
    windows = runs[side:, side:] - runs[:-side, side:] - runs[side:, :-side] + runs[:-side, :-side]
    return bool((windows == side * side).any())


def test_image_overlay_shows_input_and_overlay_side_by_side_with_a_legend(tmp_path):
    image = np.tile(np.linspace(0, 1000, 40, dtype=np.float32), (30, 1))  # [H, W] grey ramp
    labels = np.zeros((30, 40), np.uint8)
    labels[6:12, 5:15] = 1
    labels[20:25, 25:35] = 2
    names = {1: "lesion", 2: "cyst", 3: "absent"}
    preview = np.asarray(Image.open(write_image_overlay(image, labels, tmp_path / "overlay.png", names)))
    height, width = PANEL_SHORT_SIDE, round(40 * PANEL_SHORT_SIDE / 30)  # the picture's aspect, short side 256
    assert preview.shape[1] == 2 * width + GAP and preview.shape[0] > height  # two panels above a legend
    left, right = preview[:height, :width], preview[:height, width + GAP :]
    assert (left[..., 0] == left[..., 1]).all() and (left[..., 1] == left[..., 2]).all()  # the input, untouched
    colors = label_colors(3)
    scale = PANEL_SHORT_SIDE / 30
    for value, (rows, columns) in {1: ((7, 11), (6, 14)), 2: ((21, 24), (26, 34))}.items():  # inside, off the edge
        inside = right[
            round(rows[0] * scale) : round(rows[1] * scale), round(columns[0] * scale) : round(columns[1] * scale)
        ]
        assert (inside.reshape(-1, 3).argmax(axis=1) == colors[value].argmax()).all()
    assert colors[1].argmax() != colors[2].argmax()
    legend = preview[height:]
    assert _has_swatch(legend, colors[1]) and _has_swatch(legend, colors[2])
    assert not _has_swatch(legend, colors[3])  # named but not present: not in the legend


def test_volume_overlay_has_the_real_aspect_and_shows_patient_right_on_the_left(tmp_path):
    volume = np.random.default_rng(1).uniform(0, 1, size=(32, 24, 10)).astype(np.float32)
    labels = np.zeros(volume.shape, np.uint8)
    labels[2:8, 16:22, 3:7] = 1  # low i (patient's right), high j (posterior)
    dicom_like = np.diag([-2.0, -1.0, 3.0, 1.0])  # as DICOM axial: i towards the patient's left, j posterior
    path = write_volume_overlay(volume, labels, dicom_like, tmp_path / "p.png", {1: "tumour"})
    preview = np.asarray(Image.open(path))
    assert preview_slices(labels) == [3, 4, 5, 6]
    height = PANEL_SHORT_SIDE  # 24 mm (rows follow Y) by 64 mm (columns follow X): the short side is the height
    width = round(64 * PANEL_SHORT_SIDE / 24)
    assert preview.shape[1] == 4 * width + 3 * GAP and preview.shape[0] > height
    first = preview[:height, :width].astype(int)
    rows, columns = np.nonzero(first.max(-1) - first.min(-1) > 0)  # tinted: the grey input and caption are not
    x_scale, y_scale = width / 32, height / 24
    assert columns.min() >= 2 * x_scale - 1 and columns.max() <= 8 * x_scale + 1  # patient's right on the left
    assert rows.min() >= 16 * y_scale - 1 and rows.max() <= 22 * y_scale + 1  # posterior at the bottom
    assert _has_swatch(preview[height:], label_colors(1)[1])


def test_volume_overlay_shows_each_structure_where_it_is_largest():
    labels = np.zeros((20, 20, 30), np.uint8)
    labels[2:18, 2:18, 4:9] = 1  # large; every slice alike: its first slice 4
    labels[5:10, 5:10, 20:23] = 2
    labels[4:12, 4:12, 22] = 2  # the small structure's largest slice: 22
    assert preview_slices(labels) == [4, 5, 7, 22]  # the two largest-area slices, then spread over the extent
    assert preview_slices(labels, count=1, minimum=1) == [4]
    assert preview_slices(np.zeros((4, 4, 8), np.uint8)) == [1, 3, 5, 7]  # nothing found: spread over the volume


def test_volume_overlay_of_a_ct_stays_small(tmp_path):
    """pydicom's CT slice (128 x 128) as an eight-slice volume with eight structures: one panel each, no grey."""
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.float32)
    volume = np.stack([np.roll(ct, 4 * k, axis=0) for k in range(8)], axis=-1)
    labels = np.zeros(volume.shape, np.uint8)
    for k in range(8):
        labels[10 + 12 * k : 20 + 12 * k, 30:90, k] = k + 1
    path = write_volume_overlay(volume, labels, np.diag([0.66, 0.66, 5.0, 1.0]), tmp_path / "ct.png")
    preview = np.asarray(Image.open(path))
    assert preview.shape[1] == 4 * PANEL_SHORT_SIDE + 3 * GAP  # two rows of four panels
    assert preview.shape[0] > 2 * PANEL_SHORT_SIDE + GAP
    assert path.stat().st_size < 400_000
    assert not any(r == g == b for r, g, b in label_colors(8)[1:].tolist())  # grey vanishes on a grey image


def test_volume_table_in_millilitres(tmp_path):
    labels = np.zeros((20, 20, 10), np.uint8)
    labels[:10, :10, :10] = 1  # 1000 voxels
    labels[15:, 15:, :4] = 3  # 100 voxels
    affine = oblique_affine()  # voxel volume 0.7 * 0.9 * 2.5 mm^3
    path = write_csv(tmp_path / "volumes.csv", structure_volumes(labels, affine, {1: "liver", 2: "spleen"}))
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["label"], r["name"], r["voxels"]) for r in rows] == [
        ("1", "liver", "1000"),
        ("2", "spleen", "0"),
        ("3", "label_3", "100"),
    ]
    assert float(rows[0]["volume_ml"]) == pytest.approx(1000 * 0.7 * 0.9 * 2.5 / 1000)
    assert float(rows[2]["volume_ml"]) == pytest.approx(100 * 1.575 / 1000)
    assert structure_volumes(labels, np.diag([2.0, 2.0, 2.0, 1.0]))[0]["volume_ml"] == pytest.approx(8.0)


def synthetic_ct_series(folder, slices: int = 5) -> list:
    """A CT series built from pydicom's CT_small (128 x 128): new UIDs, positions 5 mm apart; file paths."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid, paths = generate_uid(), []
    folder.mkdir(exist_ok=True)
    for index in range(slices):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * index]
        paths.append(folder / f"slice {index}.dcm")
        ds.save_as(paths[-1])
    return paths


@pytest.mark.parametrize("values", [(2, 5), (1, 2)], ids=["renumbered", "numbered-1-to-S"])
def test_dicom_seg_round_trip(tmp_path, values):
    """Labels with gaps become segments 1..S (a renumbered copy); labels 1..S go to the SEG as they are."""
    liver, ventricle = values
    sources = synthetic_ct_series(tmp_path / "series")
    series = read_dicom_series(tmp_path / "series")  # the reader's layout is the writer's layout
    labels = np.zeros(series.array.shape, np.uint8)  # (columns, rows, slices)
    labels[10:40, 20:60, 1:4] = liver
    labels[70:100, 5:30, 2:5] = ventricle
    assert list(series.files) == sources
    path = write_dicom_seg(series.files, labels, tmp_path / "seg.dcm", {liver: "liver", ventricle: "left ventricle"})
    source_datasets = [pydicom.dcmread(p) for p in sources]
    source_uids = [ds.SOPInstanceUID for ds in source_datasets]
    raw = pydicom.dcmread(path)
    assert raw.Modality == "SEG"
    referenced = raw.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source_datasets[0].SeriesInstanceUID
    referenced_uids = [item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence]
    assert sorted(referenced_uids) == sorted(source_uids)
    assert [s.SegmentLabel for s in raw.SegmentSequence] == ["liver", "left ventricle"]
    assert raw.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED liver
    segmentation = hd.seg.segread(path)
    decoded = segmentation.get_pixels_by_source_instance(source_uids, combine_segments=True)  # [slices, rows, cols]
    label_of_segment = np.array([0, liver, ventricle])
    np.testing.assert_array_equal(label_of_segment[decoded].transpose(2, 1, 0), labels)


def test_dicom_seg_frames_are_highdicoms_when_bits_carry_over_between_frames(tmp_path):
    """Frames of 13 x 11 pixels (not a multiple of 8) share bytes in the bit-packed PixelData: the frames written
    one by one to the file are the bytes highdicom joins in memory, and decode to the labels."""
    from miniature_layouts import write_dicom_series

    write_dicom_series(tmp_path / "series", np.zeros((13, 11, 4), np.int16), np.diag([0.8, 0.8, 2.5, 1.0]))
    series = read_dicom_series(tmp_path / "series")
    labels = np.random.default_rng(0).integers(0, 4, series.array.shape).astype(np.uint8)
    labels[:, :, 2] = 0  # a slice without foreground: no frames for it
    path = write_dicom_seg(series.files, labels, tmp_path / "seg.dcm", {1: "liver", 2: "spleen", 3: "aorta"})
    written = pydicom.dcmread(path)
    in_memory = hd.seg.Segmentation(
        source_images=read_source_datasets(series.files),
        pixel_array=labels.transpose(2, 1, 0),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=hd.seg.segread(path).SegmentSequence,
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="1",
    )
    assert written.NumberOfFrames == in_memory.NumberOfFrames == 9
    packed = -(-9 * 13 * 11 // 8)  # 161 bytes, padded to even length (highdicom pads with "0", DICOM says 0x00)
    assert written.PixelData[:packed] == in_memory.PixelData[:packed]
    assert written.PixelData[packed:] == b"\0"
    decoded = hd.seg.segread(path).get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in read_source_datasets(series.files)], combine_segments=True
    )
    np.testing.assert_array_equal(decoded.transpose(2, 1, 0), labels)


def test_dicom_seg_frames_are_not_held_in_memory(tmp_path, monkeypatch):
    """The SEG's bit-packed frames go to the file as they are made: the writer's Python allocations stay well
    below the frames' size (highdicom alone holds them twice: each frame, then the joined value). What remains
    is a few copies of one frame while it is encoded and the frames' descriptions."""
    import tracemalloc

    from miniature_layouts import write_dicom_series

    write_dicom_series(tmp_path / "series", np.zeros((512, 512, 40), np.int16), np.diag([0.8, 0.8, 2.5, 1.0]))
    series = read_dicom_series(tmp_path / "series", lazy=True)
    labels = np.repeat(np.arange(1, 9, dtype=np.uint8), 64)[:, None, None] * np.ones((1, 512, 40), np.uint8)
    names = {value: f"organ {value}" for value in range(1, 9)}
    frame_bytes = 8 * 40 * 512 * 512 // 8  # eight segments in every slice: 320 frames, 10 MiB
    monkeypatch.setattr(writers, "COUNT_BLOCK", 1 << 16)  # label counting's own block, small beside the frames
    write_dicom_seg(series.files[:2], labels[..., :2], tmp_path / "first.dcm", names)  # highdicom loads its tables
    tracemalloc.start()
    try:
        path = write_dicom_seg(series.files, labels, tmp_path / "seg.dcm", names)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(pydicom.dcmread(path).PixelData) == frame_bytes
    assert peak < frame_bytes / 2, f"{peak} bytes allocated at the peak for {frame_bytes} bytes of frames"


def test_dicom_seg_refuses_misaligned_or_empty_labels(tmp_path):
    sources = synthetic_ct_series(tmp_path, slices=2)
    with pytest.raises(ValueError, match=r"expected labels \(columns, rows, slices\) = \(128, 128, 2\)"):
        write_dicom_seg(sources, np.ones((128, 128, 3), np.uint8), tmp_path / "seg.dcm", {1: "liver"})
    with pytest.raises(ValueError, match="no foreground"):
        write_dicom_seg(sources, np.zeros((128, 128, 2), np.uint8), tmp_path / "seg.dcm", {1: "liver"})
    assert not (tmp_path / "seg.dcm").exists()


def test_atomic_writes_get_a_normal_file_mode(tmp_path):
    import os
    import stat

    from common.io.atomic import atomic_path

    with atomic_path(tmp_path / "out.txt") as temporary:
        temporary.write_text("x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o666 & ~mask


def test_dicom_seg_for_a_series_without_optional_patient_fields(tmp_path):
    """Anonymised/converted series often lack type 2 attributes (PatientBirthDate, ...); the SEG is still written."""
    import pydicom
    from miniature_layouts import write_dicom_series

    from common.io.dicom_series import read_dicom_series

    values = np.random.default_rng(0).integers(0, 500, (12, 10, 3)).astype(np.int16)
    write_dicom_series(tmp_path / "series", values, np.diag([0.9, 0.9, 2.5, 1.0]))
    series = read_dicom_series(tmp_path / "series")
    assert "PatientBirthDate" not in pydicom.dcmread(series.files[0], stop_before_pixels=True)
    labels = np.zeros(series.array.shape, np.uint8)
    labels[2:6, 3:7, 1] = 1
    path = write_dicom_seg(series.files, labels, tmp_path / "seg.dcm", {1: "liver"})
    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
