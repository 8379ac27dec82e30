"""Read one DICOM image series from a folder as an array plus a 4x4 RAS affine.

Clinical exports mix several series in one folder, name files arbitrarily and sometimes lose a
slice. :func:`read_dicom_series` keeps one series (the requested SeriesInstanceUID, else the one
with the most images, and says which in ``DicomSeries.selection``), sorts its slices by position
along the slice normal, applies the rescale slope and intercept, and refuses a missing slice or
uneven spacing with the positions and files involved (``allow_irregular=True`` stacks them anyway).

A series is single-frame files (one slice each), or Enhanced / Legacy Converted Enhanced multi-frame
files (CT, MR, PET: one file holding every slice), whose per-frame and shared functional groups give
each frame's position (PlanePositionSequence), orientation (PlaneOrientationSequence), pixel spacing
(PixelMeasuresSequence) and rescale (PixelValueTransformationSequence). Both read to the same volume.

The slice axis of the affine is the step between consecutive ImagePositionPatient values, not the
slice normal: a CT acquired with a gantry tilt (positions shifted along y from slice to slice while
the images stay axial) gets a sheared affine that puts every slice exactly at its recorded position.

The array has shape (columns, rows, slices): index ``(i, j, k)`` is column ``i``, row ``j`` of the
``k``-th slice in order along the normal, exactly the voxel order of a NIfTI file written from the
series (nibabel, SimpleITK and dcm2niix agree), and ``affine`` maps it to RAS millimetres.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from common.io.orientation import LPS_TO_RAS

logger = logging.getLogger(__name__)

ORIENTATION_TOLERANCE = 1e-4
DUPLICATE_TOLERANCE_MM = 1e-3
RELATIVE_STEP_TOLERANCE = 0.01  # a step may differ from the median step by 1 % (plus 1 micrometre)
#: Modalities of DICOM objects that are not images to segment (a SEG written next to its source, reports, ...).
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC"})


class DicomSeriesError(ValueError):
    """The folder holds no usable series, or the chosen series is inconsistent; the message says where."""


@dataclass(frozen=True)
class DicomSeries:
    """One series as a volume.

    ``array``: (columns, rows, slices) float32, rescaled (Hounsfield units for CT): an array, or with
    ``read_dicom_series(..., lazy=True)`` a :class:`DicomSlices` that reads the files of the slices it is indexed with.
    ``affine``: (4, 4) voxel index to RAS mm; its third column is the step between consecutive slice positions.
    ``files``, ``sop_instance_uids`` and ``frame_numbers`` follow slice order (a multi-frame file appears once per
    frame, with the frame's 1-based number; ``None`` for single-frame files). ``positions`` are the slices'
    positions along the normal (mm). ``series_in_folder`` maps every image SeriesInstanceUID found to its number
    of images (slices or frames); ``selection`` says which one was read and why, naming the others; ``set_aside``
    names the DICOM image files that could not be part of any series, and why.
    """

    array: np.ndarray | DicomSlices
    affine: np.ndarray
    series_uid: str
    spacing: tuple[float, float, float]
    files: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]
    positions: tuple[float, ...]
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    series_description: str
    series_in_folder: dict[str, int]
    selection: str
    frame_numbers: tuple[int | None, ...] = ()
    set_aside: tuple[str, ...] = ()

    @property
    def is_multiframe(self) -> bool:
        """Whether the slices are frames of multi-frame (enhanced) files."""
        return any(number is not None for number in self.frame_numbers)

    @property
    def several_series(self) -> bool:
        """Whether the folder held other image series besides the one read."""
        return len(self.series_in_folder) > 1

    @property
    def tilt_degrees(self) -> float:
        """Angle between the slice step and the slice normal (a CT gantry tilt), in degrees."""
        axes = LPS_TO_RAS[:3, :3] @ self.affine[:3, :3]
        normal = np.cross(axes[:, 0], axes[:, 1])
        cosine = abs(normal @ axes[:, 2]) / (np.linalg.norm(normal) * np.linalg.norm(axes[:, 2]))
        return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


@dataclass(frozen=True)
class _Image:
    """One slice of a series: a single-frame file, or one frame of a multi-frame file.

    ``position`` and ``orientation`` are in LPS (as stored); ``pixel_spacing`` is (row spacing, column spacing).
    """

    path: Path
    frame: int | None
    dataset: pydicom.Dataset
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float

    @property
    def name(self) -> str:
        """The image in messages: its file name, and the frame for a multi-frame file."""
        return self.path.name if self.frame is None else f"{self.path.name} frame {self.frame}"

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])


@dataclass
class _Scan:
    """What a folder holds: images grouped by SeriesInstanceUID, and the DICOM files set aside (with why)."""

    groups: dict[str, list[_Image]]
    skipped: list[str]


def list_dicom_series(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> files holding images of that series, for every file under ``folder``."""
    return {
        uid: list(dict.fromkeys(image.path for image in images))
        for uid, images in _scan_folder(Path(folder)).groups.items()
    }


def read_dicom_series(
    folder: str | os.PathLike,
    series_uid: str | None = None,
    *,
    allow_irregular: bool = False,
    lazy: bool = False,
) -> DicomSeries:
    """Read the series ``series_uid`` (default: the one with the most images) under ``folder``.

    With ``lazy`` the headers are read and checked now and the pixels when the returned ``array`` is indexed
    (:class:`DicomSlices`), so memory holds only the slices in use.

    Raises :class:`DicomSeriesError` on an empty folder, an unknown UID, mixed orientations or sizes,
    two slices at one position, unreadable pixel data (naming the file), and a missing slice or
    uneven spacing unless ``allow_irregular`` (then it warns, and the affine uses the median step).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomSeriesError(f"{folder}: not a folder")
    scan = _scan_folder(folder)
    if not scan.groups:
        skipped = f" (set aside: {'; '.join(scan.skipped[:5])})" if scan.skipped else ""
        raise DicomSeriesError(
            f"{folder}: expected DICOM images with positions (single-frame slices with ImagePositionPatient, or "
            f"enhanced multi-frame files with PlanePositionSequence); found none{skipped}"
        )
    series_uid, selection = _choose_series(folder, scan.groups, series_uid)
    logger.info(selection)
    images = _sorted_images(folder, scan.groups[series_uid])
    positions = np.asarray([image.position @ images[0].normal for image in images])
    slice_vector = _slice_vector(folder, images, positions, allow_irregular)
    affine = _affine(images[0], slice_vector)
    first = images[0].dataset
    return DicomSeries(
        array=DicomSlices(images) if lazy else _rescaled_stack(images),
        affine=affine,
        series_uid=series_uid,
        spacing=tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)),
        files=tuple(image.path for image in images),
        sop_instance_uids=tuple(str(image.dataset.get("SOPInstanceUID", "")) for image in images),
        positions=tuple(float(p) for p in positions),
        study_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        modality=str(first.get("Modality", "")),
        series_description=str(first.get("SeriesDescription", "")),
        series_in_folder={uid: len(group) for uid, group in scan.groups.items()},
        selection=selection,
        frame_numbers=tuple(image.frame for image in images),
        set_aside=tuple(scan.skipped),
    )


# ----------------------------------------------------------------------------- scanning


def _scan_folder(folder: Path) -> _Scan:
    """The images of the DICOM files under ``folder``, grouped by SeriesInstanceUID."""
    groups: dict[str, list[_Image]] = defaultdict(list)
    skipped: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue  # not a DICOM file (notes, DICOMDIR viewers, ...)
        except Exception as exc:
            raise DicomSeriesError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
        if str(dataset.get("Modality", "")).upper() in NON_IMAGE_MODALITIES or "Rows" not in dataset:
            continue
        images = _frames(path, dataset) if _is_multiframe(dataset) else _single_image(path, dataset)
        if isinstance(images, str):
            skipped.append(f"{path.name}: {images}")
            logger.info("%s: skipped, %s", path, images)
            continue
        groups[str(dataset.get("SeriesInstanceUID", ""))].extend(images)
    return _Scan(dict(groups), skipped)


def _is_multiframe(dataset: pydicom.Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in dataset or int(dataset.get("NumberOfFrames", 1) or 1) > 1


def _single_image(path: Path, dataset: pydicom.Dataset) -> list[_Image] | str:
    if "ImagePositionPatient" not in dataset or "ImageOrientationPatient" not in dataset:
        return "no ImagePositionPatient / ImageOrientationPatient"
    return [_image(path, None, dataset, dataset, dataset, dataset, dataset)]


def _frames(path: Path, dataset: pydicom.Dataset) -> list[_Image] | str:
    """One :class:`_Image` per frame of a multi-frame file, from its functional groups (per-frame over shared)."""
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    shared_items = dataset.get("SharedFunctionalGroupsSequence") or []
    shared = shared_items[0] if shared_items else pydicom.Dataset()
    if per_frame and len(per_frame) != count:
        return f"{len(per_frame)} per-frame functional groups for NumberOfFrames {count}"

    def first_item(sequence: str, frame: pydicom.Dataset) -> pydicom.Dataset:
        """A functional group's item: the frame's own, else the shared one, else the top-level attributes
        (some legacy multi-frame files)."""
        for groups in (frame, shared):
            items = groups.get(sequence)
            if items:
                return items[0]
        return dataset

    images = []
    for index in range(count):
        frame = per_frame[index] if per_frame else pydicom.Dataset()

        position, orientation = (
            first_item("PlanePositionSequence", frame),
            first_item("PlaneOrientationSequence", frame),
        )
        if "ImagePositionPatient" not in position or "ImageOrientationPatient" not in orientation:
            return f"a multi-frame object without plane positions / orientations (frame {index + 1})"
        images.append(
            _image(
                path,
                index + 1,
                dataset,
                position,
                orientation,
                first_item("PixelMeasuresSequence", frame),
                first_item("PixelValueTransformationSequence", frame),
            )
        )
    return images


def _image(
    path: Path,
    frame: int | None,
    dataset: pydicom.Dataset,
    position: pydicom.Dataset,
    orientation: pydicom.Dataset,
    measures: pydicom.Dataset,
    rescale: pydicom.Dataset,
) -> _Image:
    spacing = measures.get("PixelSpacing") or dataset.get("PixelSpacing") or [1.0, 1.0]
    return _Image(
        path=path,
        frame=frame,
        dataset=dataset,
        position=np.asarray([float(v) for v in position.ImagePositionPatient], dtype=np.float64),
        orientation=np.asarray([float(v) for v in orientation.ImageOrientationPatient], dtype=np.float64),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slope=float(rescale.get("RescaleSlope", dataset.get("RescaleSlope", 1.0)) or 1.0),
        intercept=float(rescale.get("RescaleIntercept", dataset.get("RescaleIntercept", 0.0)) or 0.0),
    )


def _describe_series(uid: str, images: list[_Image]) -> str:
    first = images[0].dataset
    details = [str(first.get("Modality", "")), repr(str(first.get("SeriesDescription", "")))]
    if images[0].frame is not None:
        details.append("multi-frame")
    kept = ", ".join(d for d in details if d and d != "''")
    return f"{uid} ({kept + ', ' if kept else ''}{len(images)} images)"


def _choose_series(folder: Path, groups: dict[str, list[_Image]], requested: str | None) -> tuple[str, str]:
    counts = {uid: len(images) for uid, images in groups.items()}
    order = sorted(counts, key=lambda uid: (-counts[uid], uid))
    listing = ", ".join(_describe_series(uid, groups[uid]) for uid in order)
    if requested is not None:
        if requested not in counts:
            raise DicomSeriesError(f"{folder}: no image series with SeriesInstanceUID {requested}; found {listing}")
        others = [_describe_series(uid, groups[uid]) for uid in order if uid != requested]
        also = f"; also in the folder: {', '.join(others)}" if others else ""
        described = _describe_series(requested, groups[requested])
        return requested, f"{folder}: reading the requested series {described}{also}"
    chosen = order[0]
    if len(counts) == 1:
        return chosen, f"{folder}: one series, {_describe_series(chosen, groups[chosen])}"
    others = ", ".join(_describe_series(uid, groups[uid]) for uid in order[1:])
    return chosen, (
        f"{folder}: {len(counts)} image series; reading the largest, {_describe_series(chosen, groups[chosen])}; "
        f"not read: {others} (choose one with --series UID)"
    )


# ----------------------------------------------------------------------------- geometry


def _sorted_images(folder: Path, images: list[_Image]) -> list[_Image]:
    first = images[0]
    for image in images:
        if not np.allclose(image.orientation, first.orientation, atol=ORIENTATION_TOLERANCE):
            raise DicomSeriesError(
                f"{folder}: images of one series have different orientations: {first.name} "
                f"{first.orientation.round(5).tolist()} vs {image.name} {image.orientation.round(5).tolist()}"
            )
        for tag in ("Rows", "Columns"):
            if image.dataset.get(tag) != first.dataset.get(tag):
                raise DicomSeriesError(
                    f"{folder}: {tag} differs between {first.name} ({first.dataset.get(tag)}) "
                    f"and {image.name} ({image.dataset.get(tag)})"
                )
        if not np.allclose(image.pixel_spacing, first.pixel_spacing, rtol=1e-6, atol=1e-6):
            raise DicomSeriesError(
                f"{folder}: PixelSpacing differs between {first.name} ({list(first.pixel_spacing)}) "
                f"and {image.name} ({list(image.pixel_spacing)})"
            )
    normal = first.normal
    return sorted(images, key=lambda image: float(image.position @ normal))


def _slice_vector(folder: Path, images: list[_Image], positions: np.ndarray, allow_irregular: bool) -> np.ndarray:
    """The step (LPS mm) from one slice's position to the next; raises (or warns) on duplicates, gaps and uneven
    spacing.

    For an even series it is ``(last - first) / (n - 1)`` over the ImagePositionPatient values themselves, so a
    gantry-tilted series (positions shifted in-plane from slice to slice) keeps its shear.
    """
    if len(images) == 1:
        ds = images[0].dataset
        thickness = _thickness(images[0])
        return images[0].normal * float(ds.get("SpacingBetweenSlices") or thickness or 1.0)
    steps = np.diff(positions)
    duplicates = np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM)
    if duplicates.size:
        k = duplicates[0]
        raise DicomSeriesError(
            f"{folder}: two slices at position {positions[k]:.3f} mm along the normal: "
            f"{images[k].name} and {images[k + 1].name}; choose one acquisition"
        )
    points = np.stack([image.position for image in images])
    median = float(np.median(steps))
    tolerance = RELATIVE_STEP_TOLERANCE * median + DUPLICATE_TOLERANCE_MM
    uneven = np.flatnonzero(np.abs(steps - median) > tolerance)
    vector = (points[-1] - points[0]) / (len(images) - 1)
    off_line = np.linalg.norm(points - (points[0] + np.arange(len(images))[:, None] * vector), axis=1)
    if uneven.size:
        details = "; ".join(_describe_step(images, positions, k, median) for k in uneven[:10])
        more = f" (and {uneven.size - 10} more)" if uneven.size > 10 else ""
        message = f"{folder}: uneven slice spacing (median step {median:.3f} mm): {details}{more}"
    elif off_line.max() > tolerance:
        k = int(np.argmax(off_line))
        message = (
            f"{folder}: the slice positions do not lie on a line: {images[k].name} is {off_line[k]:.3f} mm from "
            f"where an even step from {images[0].name} to {images[-1].name} puts it"
        )
    else:
        return vector
    if not allow_irregular:
        raise DicomSeriesError(message + "; pass allow_irregular=True to stack the slices anyway")
    warnings.warn(message + "; stacking anyway with the median step", stacklevel=3)
    return np.median(np.diff(points, axis=0), axis=0)


def _thickness(image: _Image) -> float | None:
    measures = image.dataset.get("SharedFunctionalGroupsSequence")
    if measures and "PixelMeasuresSequence" in measures[0]:
        value = measures[0].PixelMeasuresSequence[0].get("SliceThickness")
        if value:
            return float(value)
    value = image.dataset.get("SliceThickness")
    return float(value) if value else None


def _describe_step(images: list[_Image], positions: np.ndarray, k: int, median: float) -> str:
    step = positions[k + 1] - positions[k]
    missing = round(step / median) - 1
    gap = f", about {missing} missing slice{'s' if missing > 1 else ''}" if missing >= 1 else ""
    return (
        f"step {step:.3f} mm between {positions[k]:.3f} mm ({images[k].name}) "
        f"and {positions[k + 1]:.3f} mm ({images[k + 1].name}){gap}"
    )


def _affine(first: _Image, slice_vector: np.ndarray) -> np.ndarray:
    """Voxel (column, row, slice) to RAS mm."""
    row_spacing, column_spacing = first.pixel_spacing
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = first.orientation[:3] * column_spacing
    affine_lps[:3, 1] = first.orientation[3:] * row_spacing
    affine_lps[:3, 2] = slice_vector
    affine_lps[:3, 3] = first.position
    return LPS_TO_RAS @ affine_lps


# ----------------------------------------------------------------------------- pixels


def _rescaled_stack(images: Sequence[_Image]) -> np.ndarray:
    """(columns, rows, slices) float32 pixel values with each image's rescale slope and intercept applied.

    Each file is read once (a multi-frame file holds many slices), and only one file's pixels are held at a time.
    """
    first = images[0].dataset
    stack = np.empty((int(first.Columns), int(first.Rows), len(images)), dtype=np.float32)
    slices_of: dict[Path, list[int]] = defaultdict(list)
    for k, image in enumerate(images):
        slices_of[image.path].append(k)
    for path, slices in slices_of.items():
        pixels = _pixels(path)
        for k in slices:
            image = images[k]
            frame = pixels[0 if image.frame is None else image.frame - 1]
            stack[:, :, k] = (frame.astype(np.float64) * image.slope + image.intercept).T
    return stack


class DicomSlices:
    """The pixels of a sorted series as an array-like ``(columns, rows, slices)`` float32, read on demand:
    indexing reads only the files of the slices it selects, rescaled as :func:`_rescaled_stack` does.

    Multi-frame files hold every slice in one file, so their stack is read once, at the first index, and kept;
    a read that needs every slice (a slab across the slice axis) is kept likewise.
    """

    def __init__(self, images: Sequence[_Image]):
        first = images[0].dataset
        self.images = list(images)
        self.shape = (int(first.Columns), int(first.Rows), len(self.images))
        self.dtype, self.ndim = np.dtype(np.float32), 3
        self._kept: np.ndarray | None = None

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[:, :, :], dtype=dtype)

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (3 - len(index))
        if self._kept is not None:
            return self._kept[index]
        chosen = np.arange(self.shape[2])[index[2]]
        everything = np.ndim(chosen) == 1 and len(chosen) == self.shape[2]
        if any(image.frame is not None for image in self.images) or everything:
            self._kept = _rescaled_stack(self.images)
            return self._kept[index]
        stack = _rescaled_stack([self.images[int(k)] for k in np.atleast_1d(chosen)])
        return stack[index[0], index[1], 0] if np.ndim(chosen) == 0 else stack[index[0], index[1]]


def _pixels(path: Path) -> np.ndarray:
    """A file's stored pixel values as (frames, rows, columns)."""
    try:
        dataset = pydicom.dcmread(path)
        if int(dataset.get("SamplesPerPixel", 1)) != 1:
            raise DicomSeriesError(
                f"{path}: expected a greyscale image, found SamplesPerPixel={dataset.SamplesPerPixel}"
            )
        pixels = dataset.pixel_array
    except DicomSeriesError:
        raise
    except Exception as exc:
        raise DicomSeriesError(f"{path}: unreadable pixel data ({type(exc).__name__}: {exc})") from exc
    return pixels.reshape(-1, int(dataset.Rows), int(dataset.Columns))
