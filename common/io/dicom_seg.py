"""Write a label volume as a DICOM Segmentation (SEG) object that references its source series (highdicom).

The labels are aligned with the source series as :func:`common.io.dicom_series.read_dicom_series` reads it:
``labels[i, j, k]`` is column ``i``, row ``j`` of the ``k``-th source image in slice order. The SEG is a
BINARY segmentation with one segment per label present, numbered 1..S in label order and named from
``label_names``; its frames reference the source images (SourceImageSequence) and the series
(ReferencedSeriesSequence), so a PACS or viewer shows it over the original series.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from common import __version__
from common.io.writers import ArrayLike, as_label_array, atomic_path, label_counts

MANUFACTURER = "gdla-bundles"
DEFAULT_SERIES_NUMBER = 1000


#: Type 2 attributes a SEG copies from its source: present (possibly empty) in every valid image, but often
#: missing from anonymised or converted series, which would stop the SEG from being written.
PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def read_source_datasets(source: Sequence[Dataset | str | os.PathLike]) -> list[Dataset]:
    """The source images as datasets (files are read without pixel data), in the given order.

    Missing type 2 patient/study attributes are added empty (on copies of given datasets), as DICOM allows.
    """
    datasets = []
    for item in source:
        if isinstance(item, Dataset):
            dataset = copy.copy(item)
        else:
            try:
                dataset = pydicom.dcmread(item, stop_before_pixels=True)
            except Exception as exc:
                raise ValueError(f"{item}: cannot read this DICOM file ({type(exc).__name__}: {exc})") from exc
        for keyword in PATIENT_STUDY_TYPE2:
            if keyword not in dataset:
                setattr(dataset, keyword, "")
        datasets.append(dataset)
    return datasets


def property_type(name: str) -> Code:
    """The SNOMED CT code pydicom knows under ``name`` in CamelCase (``"left ventricle"`` -> Left ventricle),
    else the generic "Anatomical Structure"."""
    keyword = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part)
    try:
        return getattr(codes.SCT, keyword)
    except AttributeError:
        return codes.SCT.AnatomicalStructure


def segment_descriptions(
    values: Sequence[int],
    label_names: Mapping[int, str],
    algorithm: hd.AlgorithmIdentificationSequence,
    segment_codes: Mapping[int, tuple[Code, Code]] | None = None,
) -> list[hd.seg.SegmentDescription]:
    """One description per label value (segment numbers 1..S in the order of ``values``).

    ``segment_codes`` maps a label to its (property category, property type) codes; by default the category
    is "Anatomical Structure" and the type comes from :func:`property_type` of the label's name.
    """
    descriptions = []
    for number, value in enumerate(values, start=1):
        name = label_names.get(value, f"label_{value}")
        category, kind = (segment_codes or {}).get(value, (codes.SCT.AnatomicalStructure, property_type(name)))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    return descriptions


def seg_obstacle(datasets: Sequence[Dataset]) -> str | None:
    """Why no DICOM SEG can reference these source images (``None`` when one can): what a viewer needs to put the
    SEG over them is missing, or the images are frames of several multi-frame files (a SEG references one)."""
    if not datasets:
        return "no source images"
    missing = sorted(
        {
            keyword
            for ds in datasets
            for keyword in (
                "FrameOfReferenceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPInstanceUID",
                "SOPClassUID",
            )
            if not ds.get(keyword)
        }
    )
    if missing:
        return (
            f"the source series has no {', '.join(missing)} (removed by an anonymiser?), which a SEG needs to "
            "lie on the source images"
        )
    multiframe = {
        ds.SOPInstanceUID for ds in datasets if "NumberOfFrames" in ds or "PerFrameFunctionalGroupsSequence" in ds
    }
    if multiframe and len({ds.SOPInstanceUID for ds in datasets}) > 1:
        return (
            f"the series is split over {len({ds.SOPInstanceUID for ds in datasets})} files of which "
            f"{len(multiframe)} are multi-frame; a SEG references a single multi-frame source"
        )
    return None


def _check_alignment(datasets: Sequence[Dataset], labels: np.ndarray, where: str, slices: int) -> None:
    if labels.ndim != 3:
        raise ValueError(f"{where}: expected labels [columns, rows, slices], found shape {labels.shape}")
    if not datasets:
        raise ValueError(f"{where}: no source images given")
    series = {ds.SeriesInstanceUID for ds in datasets}
    if len(series) != 1:
        raise ValueError(f"{where}: the source images belong to {len(series)} series ({sorted(series)}); expected one")
    sizes = {(int(ds.Columns), int(ds.Rows)) for ds in datasets}
    expected = (*next(iter(sizes)), slices)
    if len(sizes) != 1 or labels.shape != expected:
        raise ValueError(
            f"{where}: labels of shape {labels.shape} do not match the series: {len(datasets)} images of "
            f"(columns, rows) {sorted(sizes)}; expected labels (columns, rows, slices) = {expected}"
        )


def write_dicom_seg(
    source: Sequence[Dataset | str | os.PathLike],
    labels: ArrayLike,
    path: str | os.PathLike,
    label_names: Mapping[int, str],
    *,
    segment_codes: Mapping[int, tuple[Code, Code]] | None = None,
    algorithm_name: str = "PVT-GDLA",
    algorithm_version: str = __version__,
    series_description: str = "Segmentation",
    series_number: int = DEFAULT_SERIES_NUMBER,
    source_frames: Sequence[int] | None = None,
) -> Path:
    """Write ``labels`` ``[columns, rows, slices]`` over the ``source`` series as a DICOM SEG file.

    Args:
        source: the series' images (datasets or file paths) in slice order, one per ``labels[:, :, k]``; or, with
            ``source_frames``, one multi-frame (enhanced) image.
        source_frames: for a multi-frame source, the 1-based frame number of each ``labels[:, :, k]``
            (``DicomSeries.frame_numbers``); the SEG's frames then follow the source's frames.
        labels: uint8-compatible label volume; 0 is background.
        path: output file.
        label_names: segment label of each label value (unnamed labels become ``label_<value>``).
        segment_codes: optional (category, type) codes per label value.
        algorithm_name, algorithm_version: recorded in each segment's algorithm identification.
        series_description, series_number: of the new SEG series.

    Raises ``ValueError`` when the labels do not match the series or contain no foreground.
    """
    path = Path(path)
    array = as_label_array(labels, str(path))
    datasets = read_source_datasets(source)
    if source_frames is not None:
        datasets = datasets[:1] if len({ds.SOPInstanceUID for ds in datasets}) == 1 else datasets
        if len(datasets) != 1:
            raise ValueError(f"{path}: source_frames needs one multi-frame source image; found {len(datasets)}")
        _check_alignment(datasets, array, str(path), len(source_frames))
        frames_in_source = int(datasets[0].get("NumberOfFrames", 1) or 1)
        if sorted(source_frames) != list(range(1, frames_in_source + 1)):
            raise ValueError(
                f"{path}: the labels' slices must be the {frames_in_source} frames of the source, "
                f"each once; found frame numbers {sorted(source_frames)[:10]}..."
            )
        array = array[:, :, np.argsort(source_frames)]  # slice order -> the source's frame order
    else:
        _check_alignment(datasets, array, str(path), len(datasets))
    present = [int(v) for v in np.flatnonzero(label_counts(array)) if v != 0]
    if not present:
        raise ValueError(f"{path}: the labels hold no foreground; a DICOM SEG needs at least one segment")
    frames = array.transpose(2, 1, 0)  # [slices, rows, columns], a view
    if present != list(range(1, len(present) + 1)):  # segment numbers must run 1..S: renumber (a copy)
        renumber = np.zeros(256, dtype=np.uint8)
        renumber[present] = np.arange(1, len(present) + 1)
        frames = renumber[frames]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version
    )
    with atomic_path(path) as temporary, tempfile.TemporaryFile(dir=path.parent, suffix=".frames") as spool:
        seg = FramesToFileSegmentation(
            spool,
            source_images=datasets,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(present, label_names, algorithm, segment_codes),
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=algorithm_name,
            software_versions=__version__,
            device_serial_number="1",
            series_description=series_description,
        )
        if seg.PixelData:  # frames encoded without the hook would be lost below: refuse, do not write a blank SEG
            raise RuntimeError(f"{path}: highdicom {hd.__version__} did not encode the SEG's frames through the spool")
        if spool.tell() % 2:  # an element's value has even length
            spool.write(b"\0")
        spool.seek(0)
        seg.PixelData = spool  # pydicom writes a file-like value in chunks
        seg.save_as(temporary)
    return path


class FramesToFileSegmentation(hd.seg.Segmentation):
    """highdicom's SEG whose bit-packed frames go to ``spool`` (a binary file) as they are encoded.

    highdicom keeps every encoded frame, then joins them into one ``PixelData`` value: twice the SEG's frames in
    memory (152 MiB for eight organs in each of 600 slices of 512 x 512). Here each frame is written to the
    spool instead and ``PixelData`` is left empty; the caller sets it to the spool before saving. The bytes
    written are highdicom's own, in its order (its ``_encode_pixels_native``, which packs each frame, or the
    bits carried over between frames whose pixel count is not a multiple of 8).
    """

    def __init__(self, spool: BinaryIO, **segmentation: Any) -> None:
        self._frames_spool = spool
        super().__init__(**segmentation)

    def _encode_pixels_native(self, planes: np.ndarray) -> bytes:
        self._frames_spool.write(super()._encode_pixels_native(planes))
        return b""
