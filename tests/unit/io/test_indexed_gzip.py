"""A ``.nii.gz`` read slab by slab from its gzip stream: the voxels nibabel loads whole, read in any order, with
memory bounded by the access points and one block, never by the volume.

Real NIfTI shipped in the packages (nimare's MNI152 templates, RAS int16 and LAS uint8; nibabel's 4-D int16 and
NIfTI-2 examples) and a synthetic multi-slab int16 CT with ``scl_slope`` / ``scl_inter`` in either byte order.
"""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import nibabel as nib
import nibabel.testing
import numpy as np
import pytest
from miniature_layouts import nimare_template

from common.io import indexed_gzip
from common.io.indexed_gzip import IndexedGzipFile
from common.io.lazy_volumes import OrientedSlabs, open_lazy_volume, orientation_transform
from common.io.validation import VolumeReadError
from common.io.volumes import Volume, reorient

SPACING = 256 << 10  # a small access-point spacing: several points and blocks in these small volumes


@pytest.fixture(autouse=True)
def small_spacing(monkeypatch):
    monkeypatch.setattr(indexed_gzip, "ACCESS_POINT_SPACING", SPACING)


def real_niftis() -> list[Path]:
    examples = Path(nib.testing.data_path)
    return [
        nimare_template("tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"),
        nimare_template("MNI152_2x2x2_brainmask.nii.gz"),
        examples / "example4d.nii.gz",
        examples / "example_nifti2.nii.gz",
    ]


def slab_orders(depth: int, step: int) -> dict[str, list[int]]:
    """Slab starts in increasing order, decreasing order (a flipped slice axis) and in pairs taken out of turn
    (two engine lanes: the second lane's slab read before the first's)."""
    forward = list(range(0, depth, step))
    lanes = [start for pair in zip(forward[1::2], forward[::2]) for start in pair] + forward[len(forward) // 2 * 2 :]
    return {"forward": forward, "backward": forward[::-1], "lanes": lanes}


def assert_slabs_equal(path: Path, expected: np.ndarray, step: int = 3) -> None:
    """Every slab of ``step`` slices of ``open_lazy_volume(path)``, in each order of :func:`slab_orders`, equals
    ``expected`` (values and dtype), read from the gzip stream."""
    for order, starts in slab_orders(expected.shape[2], step).items():
        lazy = open_lazy_volume(path)
        assert isinstance(lazy.data.file_like, IndexedGzipFile), path.name
        for start in starts:
            slab = lazy.read((slice(None), slice(None), slice(start, start + step)))
            assert slab.dtype == expected.dtype, (path.name, order)
            np.testing.assert_array_equal(slab, expected[:, :, start : start + step], err_msg=f"{path.name} {order}")


@pytest.mark.parametrize("path", real_niftis(), ids=lambda path: path.name)
def test_real_nifti_slabs_equal_nibabels_full_load(path):
    assert_slabs_equal(path, np.asanyarray(nib.load(path).dataobj))


@pytest.fixture(scope="module", params=["<", ">"], ids=["little-endian", "big-endian"])
def scaled_ct(request, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 256 x 256 x 40 int16 CT (5 MiB, 20 access points' spacing) with slope 0.5 and intercept -1024, and the
    values nibabel loads from it (floating point after scaling)."""
    rng = np.random.default_rng(0)
    stored = (rng.normal(1000, 300, size=(256, 256, 40)) + np.linspace(0, 800, 40)).astype(np.int16)
    header = nib.Nifti1Header(endianness=request.param)
    header.set_data_dtype(np.int16)
    header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"phantom CT"))
    image = nib.Nifti1Image(stored, np.diag([0.7, 0.7, 2.5, 1.0]), header)
    image.header.set_slope_inter(0.5, -1024.0)
    path = tmp_path_factory.mktemp("scaled") / "ct.nii.gz"
    nib.save(image, path)
    loaded = nib.load(path)
    assert loaded.get_data_dtype().newbyteorder("=") == np.int16
    assert (loaded.dataobj.slope, loaded.dataobj.inter) == (0.5, -1024.0)
    return path, np.asanyarray(loaded.dataobj)


def test_scaled_multi_slab_ct_equals_nibabels_full_load(scaled_ct):
    path, expected = scaled_ct
    assert expected.dtype.kind == "f" and np.ptp(expected) > 1000  # scaled, not the stored int16
    assert_slabs_equal(path, expected, step=2)
    np.testing.assert_array_equal(open_lazy_volume(path).load().array, expected)


def test_reads_keep_access_points_and_one_block_not_the_volume(scaled_ct):
    """Reading every slab's bytes back to front (the costliest order) allocates far less than the volume's bytes,
    and decompresses the file about once, not once per slab."""
    path, expected = scaled_ct
    content = gzip.decompress(path.read_bytes())  # before tracing: the reference, not the reader's
    slab_bytes = expected.shape[0] * expected.shape[1] * 2 * 2  # two int16 slices
    stream = IndexedGzipFile(path)
    inflated, inflate = [0], stream._inflate

    def counted(limit: int) -> bytes:
        data = inflate(limit)
        inflated[0] += len(data)
        return data

    stream._inflate = counted
    tracemalloc.start()
    for offset in range(len(content) - slab_bytes, 0, -slab_bytes):
        stream.seek(offset)
        assert stream.read(slab_bytes) == memoryview(content)[offset : offset + slab_bytes]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(content) / (2 * SPACING) < stream.access_points <= len(content) / SPACING + 1  # at most one a spacing
    assert peak < len(content) / 3, f"{peak} bytes allocated for a volume of {len(content)}"
    assert inflated[0] < 2.5 * len(content)  # the way to the end once, then each block once


def test_slabs_across_the_stream_come_from_the_decompressed_volume(tmp_path, scaled_ct):
    """Slabs along a file axis other than the last would each span the whole stream: those are served from the
    stored voxels decompressed once; along the last axis (flipped here) the stream itself is read."""
    path, expected = scaled_ct
    affine = nib.load(path).affine
    lazy = open_lazy_volume(path)
    for axcodes, streamed in (("RAI", True), ("SAR", False)):
        transform = orientation_transform(affine, axcodes)
        slabs = OrientedSlabs(lazy, transform)
        assert isinstance(slabs.volume.data.file_like, IndexedGzipFile) is streamed, axcodes
        whole = reorient(Volume(expected, affine, path), axcodes).array
        for start in (slabs.num_slices - 5, 0, 17):
            np.testing.assert_array_equal(slabs.slab(start, start + 5), whole[:, :, start : start + 5], err_msg=axcodes)


def test_several_members_and_zero_padding_read_as_gzip_reads_them(tmp_path):
    content = np.arange(400_000, dtype=np.int32).tobytes()
    path = tmp_path / "members.gz"
    path.write_bytes(gzip.compress(content[:700_001]) + gzip.compress(content[700_001:]) + bytes(64))
    stream = IndexedGzipFile(path)
    assert stream.index() == len(content) == len(gzip.decompress(path.read_bytes()))
    for offset, size in ((1_500_000, 10), (699_990, 30), (0, 5), (1_599_990, 100)):
        stream.seek(offset)
        assert stream.read(size) == content[offset : offset + size]
    stream.seek(0)
    buffer = bytearray(len(content))
    assert stream.readinto(buffer) == len(content) and buffer == content


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_stream_is_refused_naming_the_file(tmp_path, damage):
    compressed = bytearray(gzip.compress(np.arange(200_000, dtype=np.int32).tobytes()))
    if damage == "truncated":
        compressed = compressed[: len(compressed) // 2]
    else:
        compressed[-6] ^= 0xFF  # the CRC
    path = tmp_path / "damaged.nii.gz"
    path.write_bytes(compressed)
    with pytest.raises(VolumeReadError, match=r"damaged\.nii\.gz: .*(truncated|corrupt)"):
        IndexedGzipFile(path).read()
