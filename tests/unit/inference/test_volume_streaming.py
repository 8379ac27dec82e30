"""Slab-by-slab volume segmentation: the same labels as the whole-volume path, for every format and orientation,
while reading only a few slices at a time; and the engine's streaming entry point on the CPU.

The bundles are real copies (PVT-GDLA with a pvt_v2_b0 encoder at 64 x 64, random weights); the test volume is a
block of the MNI152 brain with slices of 50 x 56 (resized to the network and back), stored with flipped and
permuted axes, so any slip in orientation, scaling or placement of a slab would change labels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from segment_fixtures import copy_bundle, crop, flip_axes, write_mha
from torch import nn

from common.inference.engine import predict_volume, stream_slices
from common.inference.flip_uncertainty import flip_entropy, volume_flip_entropy
from common.inference.options import SliceInferenceOptions
from common.io.indexed_gzip import IndexedGzipFile
from common.io.lazy_volumes import (
    LazyVolume,
    OrientedSlabs,
    open_lazy_volume,
    orientation_transform,
)
from common.io.volumes import load_volume, reorient
from common.segment.segmenter import SegmentOptions, load_bundle
from common.transforms.loading import volume_tensor

SLICES = 7


class RecordingArray:
    """An array that records the extent of every read along ``axis`` (what a memory map or proxy would serve)."""

    def __init__(self, array: np.ndarray, axis: int):
        self.array, self.axis, self.extents = array, axis, []
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, index):
        taken = np.arange(self.shape[self.axis])[index[self.axis]]
        self.extents.append(taken.size)
        return self.array[index]


@pytest.fixture(scope="module")
def brain(mni) -> tuple[np.ndarray, np.ndarray]:
    """A 50 x 56 x 7 block of the brain as int16-valued data and its RAS affine."""
    volume, affine = crop(*mni, (25, 30, 38), (50, 56, SLICES))
    return np.round(volume).astype(np.int16), affine


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream_bundles")
    return {
        name: copy_bundle(root, name, weights=True)
        for name in ("pvt_gdla_acdc_segmentation", "pvt_gdla_synapse_segmentation")
    }


def stored(folder: Path, name: str, volume: np.ndarray, affine: np.ndarray) -> Path:
    """``volume`` written as ``name`` with its axes flipped and permuted (slices along the first axis)."""
    array, moved = flip_axes(volume, affine, (0, 2))
    permute = np.eye(4)[[2, 0, 1, 3]].T  # new axes (z, x, y)
    array, moved = np.ascontiguousarray(array.transpose(2, 0, 1)), moved @ permute
    path = folder / name
    if name.endswith((".nii", ".nii.gz")):
        image = nib.Nifti1Image(array, moved)
        if "scaled" in name:
            image.header.set_slope_inter(0.5, -10.0)
            image = nib.Nifti1Image(np.round((array + 10.0) / 0.5).astype(np.int16), moved, image.header)
        nib.save(image, path)
    elif name.endswith(".nrrd"):
        import SimpleITK as sitk

        write_mha(path.with_suffix(".mha"), array, moved)
        sitk.WriteImage(sitk.ReadImage(str(path.with_suffix(".mha"))), str(path), useCompression="gz" in name)
        path.with_suffix(".mha").unlink()
    else:
        write_mha(path, array, moved)
    return path


@pytest.mark.parametrize("bundle_name", ["pvt_gdla_acdc_segmentation", "pvt_gdla_synapse_segmentation"])
def test_streamed_labels_equal_the_whole_volume_path(tmp_path, bundles, brain, bundle_name):
    segmenter = load_bundle(bundles[bundle_name], SegmentOptions(device="cpu", batch_size=2))
    assert segmenter.streaming is not None
    if bundle_name.startswith("pvt_gdla_synapse"):
        brain = (brain[0].astype(np.int16) * 3 - 150, brain[1])  # spread over the CT window [-125, 275]
    for name in ("brain.nii", "brain.nii.gz", "brain_scaled.nii", "brain.nrrd", "brain_gz.nrrd", "brain.mha"):
        path = stored(tmp_path, name, *brain)
        lazy = open_lazy_volume(path)
        whole = load_volume(path)
        np.testing.assert_array_equal(lazy.load().array, whole.array)
        expected = segmenter.segment_volume(whole, streaming=False)
        labels = segmenter.segment_volume(lazy)
        assert labels.dtype == np.uint8 and labels.shape == whole.array.shape
        assert len(np.unique(expected)) > 1, name
        np.testing.assert_array_equal(labels, expected, err_msg=name)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/self/maps")
def test_raw_formats_are_read_from_the_file_and_compressed_ones_once(tmp_path, brain):
    """Raw NRRD / MetaImage slabs are read from the file, not through a memory map (whose touched pages count as
    resident memory while the volume is open): after every slab has been read, no part of the file is mapped."""
    for name in ("brain.nrrd", "brain.mha"):
        path = stored(tmp_path, name, *brain)
        lazy = open_lazy_volume(path)
        slabs = [lazy.read((slice(None), slice(None), slice(k, k + 4))) for k in range(0, lazy.shape[2], 4)]
        np.testing.assert_array_equal(np.concatenate(slabs, axis=2), load_volume(path).array, err_msg=name)
        assert str(path.resolve()) not in Path("/proc/self/maps").read_text(), f"{name} is memory-mapped"
    lazy = open_lazy_volume(stored(tmp_path, "brain_gz.nrrd", *brain))
    assert not isinstance(lazy.data, np.memmap) and not isinstance(getattr(lazy.data, "base", None), np.memmap)
    lazy = open_lazy_volume(stored(tmp_path, "brain.nii", *brain))
    assert isinstance(lazy.data, nib.arrayproxy.ArrayProxy)


@pytest.mark.parametrize("endianness", ["<", ">"])
def test_compressed_nifti_is_read_from_its_gzip_stream_in_any_order(tmp_path, brain, endianness):
    """A ``.nii.gz`` (scaled, with a header extension, either byte order) is read slab by slab from its gzip stream;
    slabs read out of order equal ``load_volume``'s array."""
    array, affine = brain
    image = nib.Nifti1Image(array, affine, nib.Nifti1Header(endianness=endianness))
    image.header.set_slope_inter(0.5, -10.0)
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"phantom CT"))
    path = tmp_path / "brain.nii.gz"
    nib.save(image, path)
    lazy = open_lazy_volume(path)
    assert isinstance(lazy.data, nib.arrayproxy.ArrayProxy)  # scaled slab by slab
    assert isinstance(lazy.data.file_like, IndexedGzipFile)
    whole = load_volume(path).array
    for start, stop in ((4, 7), (0, 4), (2, 5)):
        np.testing.assert_array_equal(lazy.read((slice(None), slice(None), slice(start, stop))), whole[..., start:stop])
    np.testing.assert_array_equal(lazy.load().array, whole)


def test_compressed_nifti_is_segmented_from_its_gzip_stream(tmp_path, bundles, brain):
    """A ``.nii.gz`` whose slices run along its last axis, inferior-ward (so slabs are read back to front), is
    segmented from its gzip stream, not decompressed whole, with the whole-volume path's labels."""
    segmenter = load_bundle(bundles["pvt_gdla_synapse_segmentation"], SegmentOptions(device="cpu", batch_size=2))
    array, affine = flip_axes(brain[0] * 3 - 150, brain[1], (2,))  # spread over the CT window [-125, 275]
    path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), path)
    lazy = open_lazy_volume(path)
    slabs = OrientedSlabs(lazy, orientation_transform(affine, "PLS"))  # the bundle's orientation
    assert slabs.flipped and slabs.volume is lazy and isinstance(lazy.data.file_like, IndexedGzipFile)
    labels = segmenter.segment_volume(lazy)
    expected = segmenter.segment_volume(load_volume(path), streaming=False)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.usefixtures("one_torch_thread")
def test_only_slabs_of_the_batch_size_are_read(bundles, brain):
    """Through ``segment_volume`` the volume is read a batch of slices at a time (and once more for min-max)."""
    segmenter = load_bundle(bundles["pvt_gdla_acdc_segmentation"], SegmentOptions(device="cpu", batch_size=2))
    array, affine = flip_axes(*brain, (2,))  # slices run inferior-ward on disk: slabs are read back to front
    recording = RecordingArray(array, axis=2)
    labels = segmenter.segment_volume(LazyVolume(recording, affine, Path("brain")))
    np.testing.assert_array_equal(labels, segmenter.segment_volume(load_volume_like(array, affine), streaming=False))
    assert recording.extents[0] == SLICES  # the intensity range (ScaleIntensityd), one slab of up to 32 slices
    assert sorted(recording.extents[1:]) == sorted([2, 2, 2, 1])


@pytest.mark.parametrize("bundle_name", ["pvt_gdla_acdc_segmentation", "pvt_gdla_synapse_segmentation"])
def test_flip_entropy_of_a_volume_is_scored_slab_by_slab_as_whole(bundles, brain, bundle_name):
    """The active-learning score reads the volume a slab at a time and equals the score of the whole volume."""
    segmenter = load_bundle(bundles[bundle_name], SegmentOptions(device="cpu", batch_size=2))
    inferer = segmenter.inferer
    inferer.options = dataclasses.replace(inferer.options, output="probabilities")
    array, affine = flip_axes(*brain, (0, 2))
    image = segmenter.preprocessing({"image": volume_tensor(array, affine, Path("brain"), dtype=np.float32)})["image"]
    whole = flip_entropy(image[None], segmenter.network, inferer, multilabel=False)
    recording = RecordingArray(array, axis=2)
    streamed = volume_flip_entropy(
        segmenter.network, segmenter.preprocessing, inferer, LazyVolume(recording, affine, Path("brain")), False
    )
    range_pass = [SLICES] if bundle_name.startswith("pvt_gdla_acdc") else []  # MR: ScaleIntensityd's min and max
    assert recording.extents == [*range_pass, 4, 3]  # then slabs of twice the batch size
    assert 0 < streamed < np.log(segmenter.num_classes)
    assert streamed == pytest.approx(whole, rel=1e-5)


def load_volume_like(array: np.ndarray, affine: np.ndarray):
    from common.io.volumes import Volume

    return Volume(array, affine, Path("brain"))


def test_oriented_slabs_equal_slices_of_the_reoriented_volume(brain):
    array, affine = flip_axes(*brain, (0, 2))
    array, affine = np.ascontiguousarray(array.transpose(1, 2, 0)), affine @ np.eye(4)[[1, 2, 0, 3]].T
    whole = reorient(load_volume_like(array, affine), "PLS").array
    slabs = OrientedSlabs(LazyVolume(array, affine, Path("brain")), orientation_transform(affine, "PLS"))
    assert slabs.shape == whole.shape
    for start, stop in ((0, 3), (3, 7), (5, 6)):
        np.testing.assert_array_equal(slabs.slab(start, stop), whole[:, :, start:stop])


class Doubling(nn.Module):
    """Logits ``[-x, 2x, 0.5]``: label 0 below -0.5, 1 above 0.25, else 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, 2 * x, torch.full_like(x, 0.5)], dim=1)


@pytest.mark.usefixtures("one_torch_thread")
def test_stream_slices_on_the_cpu_device_equals_predict_volume():
    """The device path (host slabs, a device copy, results back on the host) run with ``device="cpu"``."""
    volume = torch.linspace(-1, 1, 20 * 24 * 9).reshape(1, 20, 24, 9).float()
    options = SliceInferenceOptions(roi_size=(16, 16), batch_size=3, interpolation="bilinear", align_corners=False)
    expected = predict_volume(Doubling().eval(), volume, options)
    written, calls = torch.zeros(1, 20, 24, 9, dtype=torch.uint8), []

    def read(start: int, stop: int) -> torch.Tensor:
        calls.append((start, stop))
        return volume[..., start:stop].permute(3, 0, 1, 2).double()  # any real dtype: the engine casts

    def write(start: int, result: torch.Tensor) -> None:
        assert result.device.type == "cpu" and result.dtype == torch.uint8
        written[..., start : start + result.shape[0]] = result.permute(1, 2, 3, 0)

    stream_slices(Doubling().eval(), read, 9, write, options, device="cpu")
    assert sorted(calls) == [(0, 3), (3, 6), (6, 9)]
    torch.testing.assert_close(written, expected)
    assert len(torch.unique(written)) == 3


def test_dicom_series_is_read_a_batch_of_files_at_a_time(tmp_path, bundles, brain):
    from miniature_layouts import write_dicom_series

    from common.io.dicom_series import read_dicom_series

    values, affine = brain
    write_dicom_series(tmp_path / "series", values.astype(np.float64) * 3 - 150, affine, modality="CT")
    lazy = open_lazy_volume(tmp_path / "series")
    series = read_dicom_series(tmp_path / "series")
    assert lazy.series.files == series.files
    np.testing.assert_allclose(lazy.affine, series.affine)
    segmenter = load_bundle(bundles["pvt_gdla_synapse_segmentation"], SegmentOptions(device="cpu", batch_size=2))
    labels = segmenter.segment_volume(lazy)
    assert lazy.data._kept is None  # axial slabs: only the batch's files were read each time
    np.testing.assert_array_equal(lazy.load().array, series.array)
    expected = segmenter.segment_volume(load_volume_like(series.array, series.affine), streaming=False)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(labels, expected)
