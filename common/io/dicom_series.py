"""Read one DICOM image series from a folder as an array plus a 4x4 RAS affine.

Clinical exports mix several series in one folder, name files arbitrarily and sometimes lose a
slice. :func:`read_dicom_series` keeps one series (the requested SeriesInstanceUID, else the one
with the most slices, and says which in ``DicomSeries.selection``), sorts its slices by position
along the slice normal, applies RescaleSlope / RescaleIntercept, and refuses a missing slice or
uneven spacing with the positions and files involved (``allow_irregular=True`` stacks them anyway).

The array has shape (columns, rows, slices): index ``(i, j, k)`` is column ``i``, row ``j`` of the
``k``-th slice in order along the normal, exactly the voxel order of a NIfTI file written from the
series (nibabel, SimpleITK and dcm2niix agree), and ``affine`` maps it to RAS millimetres.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
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


class DicomSeriesError(ValueError):
    """The folder holds no usable series, or the chosen series is inconsistent; the message says where."""


@dataclass(frozen=True)
class DicomSeries:
    """One series as a volume.

    ``array``: (columns, rows, slices) float32, rescaled (Hounsfield units for CT).
    ``affine``: (4, 4) voxel index to RAS mm. ``files`` and ``sop_instance_uids`` follow slice order;
    ``positions`` are the slices' positions along the normal (mm). ``series_in_folder`` maps every
    image SeriesInstanceUID found to its number of files; ``selection`` says which one was read and why.
    """

    array: np.ndarray
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


@dataclass(frozen=True)
class _SliceHeader:
    path: Path
    dataset: pydicom.Dataset

    @property
    def orientation(self) -> np.ndarray:
        return np.asarray([float(v) for v in self.dataset.ImageOrientationPatient], dtype=np.float64)

    @property
    def position(self) -> np.ndarray:
        return np.asarray([float(v) for v in self.dataset.ImagePositionPatient], dtype=np.float64)


def list_dicom_series(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> files holding images of that series, for every file under ``folder``."""
    return {uid: [h.path for h in headers] for uid, headers in _scan_folder(Path(folder)).items()}


def read_dicom_series(
    folder: str | os.PathLike,
    series_uid: str | None = None,
    *,
    allow_irregular: bool = False,
) -> DicomSeries:
    """Read the series ``series_uid`` (default: the one with the most slices) under ``folder``.

    Raises :class:`DicomSeriesError` on an empty folder, an unknown UID, mixed orientations or sizes,
    two slices at one position, unreadable pixel data (naming the file), and a missing slice or
    uneven spacing unless ``allow_irregular`` (then it warns, and the affine uses the median step).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomSeriesError(f"{folder}: not a folder")
    groups = _scan_folder(folder)
    if not groups:
        raise DicomSeriesError(f"{folder}: expected DICOM image files (with ImagePositionPatient); found none")
    counts = {uid: len(headers) for uid, headers in groups.items()}
    series_uid, selection = _choose_series(folder, counts, series_uid)
    logger.info(selection)
    headers = _sorted_slices(folder, groups[series_uid])
    positions = _positions_along_normal(headers)
    step = _checked_step(folder, headers, positions, allow_irregular)
    array = np.stack([_rescaled_pixels(h) for h in headers], axis=-1)
    affine = _affine(headers, step)
    first = headers[0].dataset
    return DicomSeries(
        array=array,
        affine=affine,
        series_uid=series_uid,
        spacing=tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)),
        files=tuple(h.path for h in headers),
        sop_instance_uids=tuple(str(h.dataset.get("SOPInstanceUID", "")) for h in headers),
        positions=tuple(float(p) for p in positions),
        study_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        modality=str(first.get("Modality", "")),
        series_description=str(first.get("SeriesDescription", "")),
        series_in_folder=counts,
        selection=selection,
    )


def _scan_folder(folder: Path) -> dict[str, list[_SliceHeader]]:
    """Headers of the single-image DICOM files under ``folder``, grouped by SeriesInstanceUID."""
    groups: dict[str, list[_SliceHeader]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue  # not a DICOM file (notes, DICOMDIR viewers, ...)
        except Exception as exc:
            raise DicomSeriesError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
        if "ImagePositionPatient" not in dataset or "ImageOrientationPatient" not in dataset:
            if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
                logger.info("%s: skipped a multi-frame object (not read as a slice series)", path)
            continue
        groups[str(dataset.get("SeriesInstanceUID", ""))].append(_SliceHeader(path, dataset))
    return dict(groups)


def _choose_series(folder: Path, counts: dict[str, int], requested: str | None) -> tuple[str, str]:
    listing = ", ".join(f"{uid} ({n} files)" for uid, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    if requested is not None:
        if requested not in counts:
            raise DicomSeriesError(f"{folder}: no series with SeriesInstanceUID {requested}; found {listing}")
        return requested, f"{folder}: reading the requested series {requested} ({counts[requested]} files)"
    chosen = max(sorted(counts), key=lambda uid: counts[uid])
    if len(counts) == 1:
        return chosen, f"{folder}: one series, {chosen} ({counts[chosen]} files)"
    return chosen, f"{folder}: {len(counts)} series: {listing}; reading the largest, {chosen}"


def _sorted_slices(folder: Path, headers: list[_SliceHeader]) -> list[_SliceHeader]:
    first = headers[0]
    for h in headers:
        if int(h.dataset.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomSeriesError(f"{h.path}: multi-frame images are not supported; export single-frame slices")
        if not np.allclose(h.orientation, first.orientation, atol=ORIENTATION_TOLERANCE):
            raise DicomSeriesError(
                f"{folder}: slices of one series have different orientations: {first.path.name} "
                f"{first.orientation.round(5).tolist()} vs {h.path.name} {h.orientation.round(5).tolist()}"
            )
        for tag in ("Rows", "Columns", "PixelSpacing"):
            if h.dataset.get(tag) != first.dataset.get(tag):
                raise DicomSeriesError(
                    f"{folder}: {tag} differs between {first.path.name} ({first.dataset.get(tag)}) "
                    f"and {h.path.name} ({h.dataset.get(tag)})"
                )
    normal = _normal(first)
    return sorted(headers, key=lambda h: float(h.position @ normal))


def _normal(header: _SliceHeader) -> np.ndarray:
    orientation = header.orientation
    return np.cross(orientation[:3], orientation[3:])


def _positions_along_normal(headers: list[_SliceHeader]) -> np.ndarray:
    normal = _normal(headers[0])
    return np.asarray([h.position @ normal for h in headers])


def _checked_step(folder: Path, headers: list[_SliceHeader], positions: np.ndarray, allow_irregular: bool) -> float:
    """The slice step in mm; raises (or warns) on duplicates, gaps and uneven spacing."""
    if len(headers) == 1:
        ds = headers[0].dataset
        return float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    steps = np.diff(positions)
    duplicates = np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM)
    if duplicates.size:
        k = duplicates[0]
        raise DicomSeriesError(
            f"{folder}: two slices at position {positions[k]:.3f} mm along the normal: "
            f"{headers[k].path.name} and {headers[k + 1].path.name}; choose one acquisition"
        )
    median = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - median) > RELATIVE_STEP_TOLERANCE * median + DUPLICATE_TOLERANCE_MM)
    if uneven.size:
        details = "; ".join(_describe_step(headers, positions, k, median) for k in uneven[:10])
        more = f" (and {uneven.size - 10} more)" if uneven.size > 10 else ""
        message = f"{folder}: uneven slice spacing (median step {median:.3f} mm): {details}{more}"
        if not allow_irregular:
            raise DicomSeriesError(message + "; pass allow_irregular=True to stack the slices anyway")
        warnings.warn(message + "; stacking anyway with the median step", stacklevel=3)
    return median


def _describe_step(headers: list[_SliceHeader], positions: np.ndarray, k: int, median: float) -> str:
    step = positions[k + 1] - positions[k]
    missing = round(step / median) - 1
    gap = f", about {missing} missing slice{'s' if missing > 1 else ''}" if missing >= 1 else ""
    return (
        f"step {step:.3f} mm between {positions[k]:.3f} mm ({headers[k].path.name}) "
        f"and {positions[k + 1]:.3f} mm ({headers[k + 1].path.name}){gap}"
    )


def _rescaled_pixels(header: _SliceHeader) -> np.ndarray:
    """(columns, rows) float32 pixel values with RescaleSlope / RescaleIntercept applied."""
    try:
        dataset = pydicom.dcmread(header.path)
        if int(dataset.get("SamplesPerPixel", 1)) != 1:
            raise DicomSeriesError(
                f"{header.path}: expected a greyscale image, found SamplesPerPixel={dataset.SamplesPerPixel}"
            )
        pixels = dataset.pixel_array
    except DicomSeriesError:
        raise
    except Exception as exc:
        raise DicomSeriesError(f"{header.path}: unreadable pixel data ({type(exc).__name__}: {exc})") from exc
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32).T


def _affine(headers: list[_SliceHeader], step: float) -> np.ndarray:
    """Voxel (column, row, slice) to RAS mm."""
    first = headers[0]
    orientation = first.orientation
    row_spacing, column_spacing = (float(v) for v in first.dataset.PixelSpacing)
    if len(headers) > 1:
        span = headers[-1].position - first.position
        slice_vector = span / np.linalg.norm(span) * step
    else:
        slice_vector = _normal(first) * step
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = orientation[:3] * column_spacing
    affine_lps[:3, 1] = orientation[3:] * row_spacing
    affine_lps[:3, 2] = slice_vector
    affine_lps[:3, 3] = first.position
    return LPS_TO_RAS @ affine_lps
