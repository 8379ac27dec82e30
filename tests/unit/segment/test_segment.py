"""The ``segment`` command on real data: the MNI152 brain MRI (nilearn) and a CT series built from pydicom's CT slice.

Geometry checks use a network replaced by a known function of the image (label 1 where the bundle-preprocessed
intensity exceeds 0.5), on slices whose in-plane size equals the bundle's input size, so the expected mask is exact
and computed straight in the input's voxel grid: any flip, transpose or shift on the way would show. Command-line
tests run real bundle copies (PVT-GDLA with a pvt_v2_b0 encoder at 64 x 64, random weights).
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import torch.nn as nn
from miniature_layouts import write_dicom_series
from PIL import Image
from segment_fixtures import ROI, IntensityThreshold, copy_bundle, crop, ct_series, flip_axes, write_mha

from common.__main__ import main
from common.io.dicom_series import read_dicom_series
from common.io.previews import GAP, PANEL_SHORT_SIDE, panel_size
from common.io.validation import InputError
from common.io.volumes import LPS_TO_RAS, load_volume
from common.segment.bundle_metadata import BundleError
from common.segment.cases import segment_cases
from common.segment.inputs import find_cases
from common.segment.segmenter import SegmentOptions, load_bundle


class IntensityBands(nn.Module):
    """Sigmoid logits of three overlapping bands of the first channel: x > 0.5, x > 0.3 and x < 0.2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :1]
        return torch.cat([x - 0.5, x - 0.3, 0.2 - x], dim=1)


def minmax_above_half(array: np.ndarray) -> np.ndarray:
    """The threshold network's mask under per-volume min-max scaling (the MR bundles' preprocessing)."""
    array = array.astype(np.float32)
    return (array - array.min()) / (array.max() - array.min()) > 0.5


@pytest.fixture(scope="module")
def marked_brain(mni) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 64 x 64 x 5 axial block of the brain (RAS), its affine, and two masks: a bright marker put in the left
    hemisphere (world x = -20 mm) and a dark block put in the right one (x = +20 mm)."""
    volume, affine = crop(*mni, (17, 30, 40), (ROI, ROI, 5))
    i_left, i_right = (int(round(np.linalg.solve(affine, [x, 0, 0, 1])[0])) for x in (-20.0, 20.0))
    left, right = np.zeros(volume.shape, bool), np.zeros(volume.shape, bool)
    left[i_left - 3 : i_left + 3, 20:30, 1:4] = True
    right[i_right - 3 : i_right + 3, 20:30, 1:4] = True
    volume[left], volume[right] = volume.max(), 0.0
    return volume, affine, left, right


@pytest.fixture(scope="module")
def mr_bundle(tmp_path_factory) -> Path:
    return copy_bundle(tmp_path_factory.mktemp("bundles"), "pvt_gdla_acdc_segmentation", weights=True)


# ----------------------------------------------------------------------------- geometry with an exact network


@pytest.mark.parametrize("storage", ["nifti_las", "mha_lps"])
def test_mri_volume_keeps_geometry_and_left_stays_left(tmp_path, mr_bundle, marked_brain, storage):
    volume, affine, left, right = marked_brain
    inputs = tmp_path / "in"
    inputs.mkdir()
    axes = (0,) if storage == "nifti_las" else (0, 1)
    stored, stored_affine = flip_axes(volume, affine, axes)
    left, right = np.flip(left, axes), np.flip(right, axes)
    if storage == "nifti_las":
        source = inputs / "brain.nii.gz"
        nib.save(nib.Nifti1Image(stored, stored_affine), source)
    else:
        source = write_mha(inputs / "brain.mha", stored, stored_affine)
    assert "".join(nib.aff2axcodes(load_volume(source).affine)) == ("LAS" if storage == "nifti_las" else "LPS")

    results = segment_cases(
        mr_bundle, source, tmp_path / "out", SegmentOptions(network=IntensityThreshold(), device="cpu"), progress=False
    )

    assert [(r.case, r.status) for r in results] == [("brain", "ok")]
    output = nib.load(tmp_path / "out" / "brain_seg.nii.gz")
    assert output.shape == stored.shape
    np.testing.assert_allclose(output.affine, load_volume(source).affine, atol=1e-5)
    labels = np.asarray(output.dataobj)
    np.testing.assert_array_equal(labels, minmax_above_half(stored))
    world_x = {
        side: nib.affines.apply_affine(output.affine, np.argwhere(mask))[:, 0]
        for side, mask in (("left", left), ("right", right))
    }
    assert (world_x["left"] < 0).all() and (world_x["right"] > 0).all()  # the patient's left is at negative x
    assert labels[left].all() and not labels[right].any()
    assert (tmp_path / "out" / "brain_overlay.png").is_file()
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    structure = next(row for row in rows if row["label"] == "1")
    assert structure["case"] == "brain" and int(structure["voxels"]) == int((labels == 1).sum())
    assert float(structure["volume_ml"]) == pytest.approx((labels == 1).sum() * voxel_ml)


def test_ct_dicom_series_gives_nifti_and_a_dicom_seg_on_the_source_series(tmp_path):
    bundle = copy_bundle(tmp_path, "pvt_gdla_synapse_segmentation", spatial_size=128)
    volume, files = ct_series(tmp_path / "series")
    series = read_dicom_series(tmp_path / "series")
    base = pydicom.dcmread(files[0], stop_before_pixels=True)
    spacing = [float(v) for v in base.PixelSpacing]
    affine = LPS_TO_RAS @ np.array(
        [
            [spacing[1], 0, 0, float(base.ImagePositionPatient[0])],
            [0, spacing[0], 0, float(base.ImagePositionPatient[1])],
            [0, 0, 5.0, float(base.ImagePositionPatient[2])],
            [0, 0, 0, 1],
        ]
    )

    results = segment_cases(
        bundle,
        tmp_path / "series",
        tmp_path / "out",
        SegmentOptions(network=IntensityThreshold(), device="cpu"),
        progress=False,
    )

    assert [(r.case, r.status) for r in results] == [("series", "ok")]
    output = nib.load(tmp_path / "out" / "series_seg.nii.gz")
    assert output.shape == volume.shape
    np.testing.assert_allclose(output.affine, affine, atol=1e-4)
    np.testing.assert_allclose(output.affine, series.affine, atol=1e-6)
    labels = np.asarray(output.dataobj)
    np.testing.assert_array_equal(labels, volume > 75)  # CT window [-125, 275] HU -> [0, 1]: 0.5 is 75 HU

    seg = pydicom.dcmread(tmp_path / "out" / "series_seg.dcm")
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == series.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.SegmentSequence[0].SegmentLabel == "spleen"  # label 1 of the Synapse bundle
    slice_of = {uid: k for k, uid in enumerate(series.sop_instance_uids)}
    frames = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
    seen = set()
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_array_equal(frame, labels[:, :, slice_of[uid]].T)
        seen.add(uid)
    assert seen == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}


def test_picture_mask_has_the_picture_size(tmp_path, mni):
    bundle = copy_bundle(tmp_path, "pvt_gdla_busi_segmentation")
    axial = np.rot90(crop(*mni, (17, 30, 45), (ROI, ROI, 1))[0][:, :, 0])  # (H, W), anterior up
    grey = np.round(255 * axial / axial.max()).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "slice.png")

    results = segment_cases(
        bundle,
        tmp_path / "slice.png",
        tmp_path / "out",
        SegmentOptions(network=IntensityThreshold(), device="cpu"),
        progress=False,
    )

    assert results[0].status == "ok"
    mask = np.asarray(Image.open(tmp_path / "out" / "slice_seg.png"))
    np.testing.assert_array_equal(mask, np.where(minmax_above_half(grey), 255, 0))  # two classes: 0 / 255
    preview = np.asarray(Image.open(tmp_path / "out" / "slice_overlay.png"))  # picture and overlay, legend below
    panel = panel_size(grey.shape)
    assert preview.shape[0] > panel[0] and preview.shape[1] == 2 * panel[1] + GAP and min(panel) == PANEL_SHORT_SIDE


def test_multilabel_picture_bundle_writes_one_mask_per_channel(tmp_path, mni):
    bundle = copy_bundle(tmp_path, "transunet_uwmgi_segmentation")
    axial = np.rot90(crop(*mni, (17, 30, 45), (ROI, ROI, 1))[0][:, :, 0])
    grey = np.round(255 * axial / axial.max()).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "slice_0045.png")

    results = segment_cases(
        bundle,
        tmp_path / "slice_0045.png",
        tmp_path / "out",
        SegmentOptions(network=IntensityBands(), device="cpu"),
        progress=False,
    )

    assert results[0].status == "ok", results[0].error
    scaled = (grey.astype(np.float32) - grey.min()) / (grey.max() - grey.min())
    expected = {"large_bowel": scaled > 0.5, "small_bowel": scaled > 0.3, "stomach": scaled < 0.2}
    for channel, mask in expected.items():
        written = np.asarray(Image.open(tmp_path / "out" / f"slice_0045_{channel}.png"))
        np.testing.assert_array_equal(written, np.where(mask, 255, 0))
    assert [p.name for p in results[0].outputs] == [
        "slice_0045_large_bowel.png",
        "slice_0045_small_bowel.png",
        "slice_0045_stomach.png",
        "slice_0045_overlay.png",
    ]


# ----------------------------------------------------------------------------- the command with a real bundle


def test_segment_equals_the_bundles_inference_config(tmp_path, mr_bundle, mni):
    """Same input (LAS, 50 x 56 slices resized to 64 x 64 and back) -> identical masks from both paths."""
    from monai.bundle import run as run_bundle

    volume, affine = crop(*mni, (25, 30, 42), (50, 56, 3))
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(*flip_axes(volume, affine, (0,))), tmp_path / "in" / "brain.nii.gz")
    run_bundle(
        config_file=str(mr_bundle / "configs" / "inference.json"),
        meta_file=str(mr_bundle / "configs" / "metadata.json"),
        bundle_root=str(mr_bundle),
        input_dir=str(tmp_path / "in"),
        output_dir=str(tmp_path / "bundle_out"),
        device="$torch.device('cpu')",
    )
    assert (
        main(
            [
                "segment",
                "--bundle",
                str(mr_bundle),
                "--input",
                str(tmp_path / "in" / "brain.nii.gz"),
                "--output",
                str(tmp_path / "out"),
                "--device",
                "cpu",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )

    ours = np.asarray(nib.load(tmp_path / "out" / "brain_seg.nii.gz").dataobj)
    theirs = np.asarray(nib.load(tmp_path / "bundle_out" / "brain_seg.nii.gz").dataobj)
    assert ours.shape == volume.shape and len(np.unique(ours)) > 1
    np.testing.assert_array_equal(ours, theirs)


def test_bundle_inference_streams_every_format_and_names_a_failed_case(tmp_path, mr_bundle, mni, monkeypatch):
    """inference.json reads NIfTI, MetaImage and a DICOM series slab by slab (never the loader's whole volume),
    writes the masks ``segment`` writes, goes on past a broken file and ends with an error naming it."""
    from monai.bundle import run as run_bundle

    import common.inference.volume_streaming
    from common.inference.bundle_streaming import FailedCasesError

    block, affine = crop(*mni, (25, 30, 40), (50, 56, 6))
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(*flip_axes(block, affine, (0,))), inputs / "brain.nii.gz")
    write_mha(inputs / "brain_mha.mha", block, affine)
    write_dicom_series(inputs / "brain_dicom", np.round(block * 100), affine)
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    streamed = []
    real_segment_streamed = common.inference.volume_streaming.segment_streamed
    monkeypatch.setattr(
        common.inference.volume_streaming,
        "segment_streamed",
        lambda *args: streamed.append(args[2].path) or real_segment_streamed(*args),
    )
    datalist = [str(inputs / name) for name in ("brain.nii.gz", "broken.nii.gz", "brain_mha.mha", "brain_dicom")]

    with pytest.raises(RuntimeError) as failure:  # monai.bundle wraps the run's error
        run_bundle(
            config_file=str(mr_bundle / "configs" / "inference.json"),
            meta_file=str(mr_bundle / "configs" / "metadata.json"),
            bundle_root=str(mr_bundle),
            datalist=datalist,
            output_dir=str(tmp_path / "bundle_out"),
            device="$torch.device('cpu')",
        )

    reason = failure.value.__cause__
    assert isinstance(reason, FailedCasesError) and str(reason).startswith("1 case(s) not segmented")
    assert f"{inputs / 'broken.nii.gz'}: expected a NIfTI-1 or NIfTI-2 header" in str(reason)
    assert sorted(Path(path).name for path in streamed) == ["brain.nii.gz", "brain_dicom", "brain_mha.mha"]
    assert sorted(p.name for p in (tmp_path / "bundle_out").iterdir()) == [
        "brain_dicom_seg.nii.gz",
        "brain_mha_seg.nii.gz",
        "brain_seg.nii.gz",
    ]
    assert main(["segment", "--bundle", str(mr_bundle), "--input", str(inputs), "--output", str(tmp_path / "out")]) == 1
    for name in ("brain", "brain_mha", "brain_dicom"):
        theirs = nib.load(tmp_path / "bundle_out" / f"{name}_seg.nii.gz")
        ours = nib.load(tmp_path / "out" / f"{name}_seg.nii.gz")
        np.testing.assert_allclose(theirs.affine, ours.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(theirs.dataobj), np.asarray(ours.dataobj))
        assert len(np.unique(np.asarray(ours.dataobj))) > 1


def test_folder_with_a_corrupt_case(tmp_path, mr_bundle, mni, capsys):
    inputs = tmp_path / "cases"
    inputs.mkdir()
    good = {"upper": crop(*mni, (20, 25, 50), (40, 48, 2)), "lower": crop(*mni, (30, 35, 30), (36, 40, 2))}
    for name, (block, block_affine) in good.items():
        nib.save(nib.Nifti1Image(block, block_affine), inputs / f"{name}.nii.gz")
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    (inputs / "notes.txt").write_text("not an image")

    code = main(
        [
            "segment",
            "--bundle",
            str(mr_bundle),
            "--input",
            str(inputs),
            "--output",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )

    assert code == 1
    for name, (block, block_affine) in good.items():
        output = nib.load(tmp_path / "out" / f"{name}_seg.nii.gz")
        assert output.shape == block.shape
        np.testing.assert_allclose(output.affine, block_affine, atol=1e-6)
    printed = capsys.readouterr().out
    assert "broken  failed" in printed and str(inputs / "broken.nii.gz") in printed
    assert "2 of 3 case(s) segmented, 1 failed" in printed and "notes" not in printed
    report = {row["case"]: row for row in csv.DictReader(open(tmp_path / "out" / "report.csv"))}
    assert {case: row["status"] for case, row in report.items()} == {"broken": "failed", "lower": "ok", "upper": "ok"}
    assert "expected a NIfTI-1 or NIfTI-2 header; found an unreadable or truncated file" in report["broken"]["error"]
    assert not (tmp_path / "out" / "broken_seg.nii.gz").exists()


# ----------------------------------------------------------------------------- refusals


def test_missing_or_unfitting_weights_are_named(tmp_path, mr_bundle, capsys):
    bare = copy_bundle(tmp_path, "pvt_gdla_synapse_segmentation")
    with pytest.raises(BundleError, match=r"models/model.pt: model weights not found"):
        load_bundle(bare, SegmentOptions(device="cpu"))
    assert main(["segment", "--bundle", str(bare), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "model weights not found" in capsys.readouterr().err
    # the MR bundle's weights have 4 output classes; the Synapse network has 9
    with pytest.raises(BundleError, match="do not fit the bundle's network_def"):
        load_bundle(bare, SegmentOptions(weights=mr_bundle / "models" / "model.pt", device="cpu"))
    with pytest.raises(BundleError, match="configs/inference.json: not found"):
        load_bundle(tmp_path / "nowhere")


def test_wrong_channels_and_wrong_kind_fail_their_case_only(tmp_path, mr_bundle, marked_brain):
    volume, affine, _, _ = marked_brain
    inputs = tmp_path / "cases"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(np.stack([volume, volume], axis=-1), affine), inputs / "two_channels.nii.gz")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(inputs / "picture.png")
    nib.save(nib.Nifti1Image(volume, affine), inputs / "good.nii.gz")

    results = {
        r.case: r
        for r in segment_cases(
            mr_bundle,
            inputs,
            tmp_path / "out",
            SegmentOptions(network=IntensityThreshold(), device="cpu"),
            progress=False,
        )
    }

    assert results["good"].status == "ok"
    assert results["two_channels"].status == "failed"
    assert "two_channels.nii.gz" in results["two_channels"].error
    assert "expects 1-channel images; found 2 channel(s)" in results["two_channels"].error
    assert results["picture"].status == "failed" and "segments volumes" in results["picture"].error
    with pytest.raises(InputError, match="no such file or folder"):
        segment_cases(
            mr_bundle, tmp_path / "missing.nii.gz", tmp_path / "out", SegmentOptions(network=IntensityThreshold())
        )


def test_find_cases_in_a_mixed_folder(tmp_path, mni):
    root = tmp_path / "inputs"
    volume, affine = crop(*mni, (30, 30, 40), (4, 4, 2))
    nib.save(nib.Nifti1Image(volume, affine), root.mkdir() or root / "a.nii.gz")
    write_mha(root / "a.mha", volume, affine)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "b.png")
    write_dicom_series(root / "series 1", np.zeros((4, 4, 2)), np.eye(4))
    (root / "readme.txt").write_text("skip me")
    (root / ".hidden.nii.gz").write_text("skip me")

    cases = [(c.name, c.path.name, c.kind) for c in find_cases(root)]

    assert cases == [
        ("a", "a.mha", "volume"),
        ("a.nii.gz", "a.nii.gz", "volume"),
        ("b", "b.png", "picture"),
        ("series 1", "series 1", "dicom"),
    ]
    assert [(c.name, c.kind) for c in find_cases(root / "series 1")] == [("series 1", "dicom")]
    with pytest.raises(InputError, match="not a volume or picture"):
        find_cases(root / "readme.txt")
