"""A miniature hospital archive, written by the tests: tilted and enhanced multi-frame DICOM, and hostile files.

Everything is tiny (a few slices of 64 x 64 or less) so the tests stay fast.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

LPS = np.diag([-1.0, -1.0, 1.0])
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def tilted_affine(shape_xy: tuple[int, int], spacing: tuple[float, float, float], tilt_degrees: float) -> np.ndarray:
    """The RAS affine of an axial CT acquired with a gantry tilt: the images stay axial (the first two columns),
    while each slice's position moves ``tan(tilt) * z step`` along y (anterior-posterior)."""
    dx, dy, dz = spacing
    affine = np.diag([dx, dy, dz, 1.0])
    affine[1, 2] = dz * np.tan(np.radians(tilt_degrees))
    affine[:3, 3] = [-dx * shape_xy[0] / 2, -dy * shape_xy[1] / 2, -40.0]
    return affine


def _ds(values: list[float]) -> list[DSfloat]:
    return [DSfloat(v, auto_format=True) for v in values]


def write_enhanced_ct(
    path: Path,
    values: np.ndarray,
    affine: np.ndarray,
    *,
    slopes: list[float] | None = None,
    intercepts: list[float] | None = None,
    frame_order: list[int] | None = None,
    per_frame_orientation: bool = False,
    modality: str = "CT",
    frame_of_reference: bool = True,
) -> Path:
    """Write an (X, Y, Z) volume with a RAS ``affine`` as one Enhanced CT (or MR) multi-frame file.

    Frame ``f`` holds slice ``frame_order[f]`` (default: slice order); its position is in the per-frame
    PlanePositionSequence, its rescale in a per-frame PixelValueTransformationSequence (``slopes[k]``,
    ``intercepts[k]`` for slice ``k``); spacing and orientation are shared (orientation per frame with
    ``per_frame_orientation``). Stored pixels are int16.
    """
    n = values.shape[2]
    slopes = slopes or [1.0] * n
    intercepts = intercepts or [0.0] * n
    frame_order = list(range(n)) if frame_order is None else frame_order
    columns, rows = (float(np.linalg.norm(affine[:3, i])) for i in (0, 1))
    orientation = _ds([*(LPS @ affine[:3, 0] / columns), *(LPS @ affine[:3, 1] / rows)])
    sop_class = ENHANCED_CT if modality == "CT" else ENHANCED_MR
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if frame_of_reference:
        ds.FrameOfReferenceUID = generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.SeriesDescription = "MINI", "Mini^Test", modality, "enhanced"
    ds.StudyDate, ds.StudyTime, ds.ContentDate, ds.ContentTime = "20260101", "120000", "20260101", "120000"
    ds.AcquisitionDateTime = "20260101120000"
    ds.InstanceNumber, ds.SeriesNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = values.shape[1], values.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = _ds([rows, columns])
    measures.SliceThickness = DSfloat(float(abs(affine[2, 2])), auto_format=True)
    shared.PixelMeasuresSequence = [measures]
    if not per_frame_orientation:
        plane = Dataset()
        plane.ImageOrientationPatient = orientation
        shared.PlaneOrientationSequence = [plane]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, stored_frames = [], []
    for k in frame_order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = _ds(list(LPS @ (affine @ [0, 0, k, 1])[:3]))
        item.PlanePositionSequence = [position]
        if per_frame_orientation:
            plane = Dataset()
            plane.ImageOrientationPatient = orientation
            item.PlaneOrientationSequence = [plane]
        rescale = Dataset()
        rescale.RescaleSlope = DSfloat(slopes[k], auto_format=True)
        rescale.RescaleIntercept = DSfloat(intercepts[k], auto_format=True)
        rescale.RescaleType = "HU" if modality == "CT" else "US"
        item.PixelValueTransformationSequence = [rescale]
        content = Dataset()
        content.StackID, content.InStackPositionNumber, content.DimensionIndexValues = "1", k + 1, [1, k + 1]
        item.FrameContentSequence = [content]
        frames.append(item)
        stored = np.round((values[:, :, k].astype(np.float64) - intercepts[k]) / slopes[k])
        assert -32768 <= stored.min() and stored.max() <= 32767
        stored_frames.append(stored.T.astype("<i2"))
    ds.PerFrameFunctionalGroupsSequence = frames
    dimension_uid = generate_uid()
    organisation = Dataset()
    organisation.DimensionOrganizationUID = dimension_uid
    ds.DimensionOrganizationSequence = [organisation]
    indices = []
    for pointer, group in ((0x00209056, 0x00209111), (0x00209057, 0x00209111)):  # StackID, InStackPositionNumber
        index = Dataset()
        index.DimensionOrganizationUID, index.DimensionIndexPointer = dimension_uid, pointer
        index.FunctionalGroupPointer = group
        indices.append(index)
    ds.DimensionIndexSequence = indices
    ds.PixelData = np.ascontiguousarray(np.stack(stored_frames)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------- hostile and broken volume files


def write_nifti_with_header(path: Path, array: np.ndarray, affine: np.ndarray, **header_fields) -> Path:
    """A NIfTI file of ``array`` whose header fields are then overwritten (``dim=...`` and the like); NIfTI-2 when
    a dimension does not fit NIfTI-1's 16 bits."""
    large = max(header_fields.get("dim", [0]), default=0) > 32767
    image = (nib.Nifti2Image if large else nib.Nifti1Image)(array, affine)
    image.header["vox_offset"] = image.header.sizeof_hdr + 4
    for name, value in header_fields.items():
        image.header[name] = value
    raw = image.header.binaryblock + b"\0" * 4 + np.asarray(array).tobytes(order="F")
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def write_sitk(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """An (X, Y, Z) array as NRRD / MetaImage through SimpleITK (identity geometry)."""
    sitk.WriteImage(
        sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0))), str(path), useCompression=compress
    )
    return path


def truncate(path: Path, keep_fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def write_hostile_corpus(folder: Path) -> dict[str, tuple[Path, str]]:
    """Bad volume files, each with a fragment of the refusal it must get: name -> (path, expected message)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    block = rng.normal(100, 20, (16, 12, 3)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nan_block = block.copy()
    nan_block[:, :, 1] = np.nan
    nan_block[0, 0, 0] = np.inf
    rgb = np.zeros((8, 8, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    corpus = {
        "nan": (folder / "nan.nii.gz", "found 192 NaN and 1 infinite voxel(s) of 576"),
        "rgb24": (folder / "rgb24.nii.gz", "expected greyscale voxels (integers or floats); found RGB24 voxels"),
        "singular": (folder / "singular.nii.gz", "expected a voxel-to-millimetre affine with non-zero voxel sizes"),
        "huge_header": (folder / "huge_header.nii", "the header declares 100000 x 100000 x 1000 voxels"),
        "huge_header_gz": (folder / "huge_header_gz.nii.gz", "the header declares 100000 x 100000 x 1000 voxels"),
        "zero_size": (folder / "zero_size.nii", "found shape (16, 0, 3) (no voxels)"),
        "truncated_nrrd": (folder / "truncated_nrrd.nrrd", "the header declares 16 x 12 x 3 voxels (1152 bytes of "),
        "truncated_nrrd_gz": (folder / "truncated_nrrd_gz.nrrd", "the compressed data expands to"),
        "truncated_mha": (folder / "truncated_mha.mha", "the header declares 16 x 12 x 3 voxels (1152 bytes of voxel"),
        "claims_1000_cubed": (folder / "claims_1000_cubed.nii.gz", "the header declares 1000 x 1000 x 1000 voxels"),
        "missing_raw": (folder / "missing_raw.mhd", "its header names the data file missing_raw.raw, which does not"),
        "time_series": (
            folder / "time_series.nii.gz",
            "expected a 3-D volume (X, Y, Z), or (X, Y, Z, channels); found shape (16, 12, 3, 2, 2)",
        ),
    }
    nib.save(nib.Nifti1Image(nan_block, affine), corpus["nan"][0])
    nib.save(nib.Nifti1Image(rgb, affine), corpus["rgb24"][0])
    write_nifti_with_header(corpus["singular"][0], block, affine, srow_y=[0, 0, 0, 0], qform_code=0, sform_code=1)
    huge = [3, 100000, 100000, 1000, 1, 1, 1, 1]
    write_nifti_with_header(corpus["huge_header"][0], block, affine, dim=huge)
    write_nifti_with_header(corpus["huge_header_gz"][0], block, affine, dim=huge)
    write_nifti_with_header(corpus["claims_1000_cubed"][0], block, affine, dim=[3, 1000, 1000, 1000, 1, 1, 1, 1])
    write_nifti_with_header(corpus["zero_size"][0], block, affine, dim=[3, 16, 0, 3, 1, 1, 1, 1])
    truncate(write_sitk(corpus["truncated_nrrd"][0], block.astype(np.int16)))
    truncate(write_sitk(corpus["truncated_nrrd_gz"][0], rng.normal(0, 1, (16, 12, 3)).astype(np.float32), True))
    truncate(write_sitk(corpus["truncated_mha"][0], block.astype(np.int16)))
    write_sitk(corpus["missing_raw"][0], block.astype(np.int16))
    (folder / "missing_raw.raw").unlink()
    nib.save(nib.Nifti1Image(rng.normal(0, 1, (16, 12, 3, 2, 2)).astype(np.float32), affine), corpus["time_series"][0])
    return corpus
