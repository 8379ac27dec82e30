"""Segment cases with a bundle and write their outputs: masks, previews, DICOM SEGs and the run's tables.

:func:`segment_cases` segments every case at an input (:func:`common.segment.inputs.find_cases`) with a bundle
(:func:`common.segment.segmenter.load_bundle`); each case's outputs are staged and published only when it succeeds,
and the run ends with ``report.csv`` (every case) and ``volumes.csv`` (per-structure volumes of volume cases).
:func:`format_report` is the table the command prints.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.io.dicom_seg import read_source_datasets, seg_obstacle, write_dicom_seg
from common.io.dicom_series import DicomSeries
from common.io.images import PICTURE_SUFFIXES
from common.io.lazy_volumes import open_lazy_volume
from common.io.previews import write_image_overlay, write_volume_overlay
from common.io.staging import STAGING_PREFIX, publish, staged_folder
from common.io.tables import write_csv
from common.io.validation import InputError, short_reason
from common.io.writers import structure_volumes, write_nifti
from common.segment.inputs import Case, find_cases
from common.segment.segmenter import BundleSegmenter, SegmentOptions, load_bundle

logger = logging.getLogger(__name__)

REPORT_FILE = "report.csv"
VOLUMES_FILE = "volumes.csv"


@dataclass
class CaseResult:
    """How one case went: ``status`` is ``"ok"`` or ``"failed"``; ``outputs`` lists the files written; ``warnings``
    what a user must know about a case that went through (the series chosen among several, a SEG not written)."""

    case: str
    source: Path
    status: str
    outputs: list[Path] = field(default_factory=list)
    error: str = ""
    volumes: list[dict] = field(default_factory=list)  # structure_volumes rows, volume cases only
    warnings: list[str] = field(default_factory=list)


def preview_labels(labels: np.ndarray) -> np.ndarray:
    """One label map ``[H, W]`` from ``[K', H, W]``: the map itself, or binary channels as 1..K (later on top)."""
    if len(labels) == 1:
        return labels[0]
    return (np.arange(1, len(labels) + 1, dtype=np.uint8)[:, None, None] * (labels > 0)).max(axis=0)


def segment_case(
    segmenter: BundleSegmenter, case: Case, output_dir: Path, *, series_uid: str | None = None
) -> CaseResult:
    """Segment one case and write its outputs into ``output_dir``; ``series_uid`` picks a DICOM folder's series."""
    if case.kind == "picture":
        if segmenter.spatial_dims != 2:
            raise InputError(
                f"{case.path}: a 2-D picture, but the bundle {segmenter.root.name} segments volumes "
                "(NIfTI, NRRD, MHA or a DICOM series)"
            )
        return _segment_picture_case(segmenter, case, output_dir)
    if segmenter.spatial_dims != 3:
        raise InputError(
            f"{case.path}: a volume, but the bundle {segmenter.root.name} segments 2-D pictures "
            f"({', '.join(PICTURE_SUFFIXES)})"
        )
    return _segment_volume_case(segmenter, case, output_dir, series_uid)


def _segment_picture_case(segmenter: BundleSegmenter, case: Case, output_dir: Path) -> CaseResult:
    picture, labels = segmenter.segment_picture(case.path)
    segmenter.mask_writer(output_dir)({"pred": labels, "source": f"{case.name}{case.path.suffix}"})
    names = segmenter.channel_names or ["seg"]  # SaveMask2Dd's file names: <stem>_seg.png or <stem>_<channel>.png
    outputs = [output_dir / f"{case.name}_{name}.png" for name in names]
    legend = dict(enumerate(segmenter.channel_names, start=1)) if segmenter.channel_names else segmenter.label_names
    outputs.append(
        write_image_overlay(picture, preview_labels(labels), output_dir / f"{case.name}_overlay.png", legend)
    )
    return CaseResult(case.name, case.path, "ok", outputs)


def _segment_volume_case(
    segmenter: BundleSegmenter, case: Case, output_dir: Path, series_uid: str | None = None
) -> CaseResult:
    volume = open_lazy_volume(case.path, series_uid=series_uid if case.kind == "dicom" else None)
    series = volume.series
    labels = segmenter.segment_volume(volume)
    outputs = [
        write_nifti(labels, volume.affine, output_dir / f"{case.name}_seg.nii.gz"),
        write_volume_overlay(
            volume, labels, volume.affine, output_dir / f"{case.name}_overlay.png", segmenter.label_names
        ),
    ]
    warnings = []
    if series is not None:
        warnings += [series.selection] if series.several_series else []
        warnings += [f"set aside in {case.path}: {'; '.join(series.set_aside)}"] if series.set_aside else []
        if series.tilt_degrees > 0.01:
            warnings.append(
                f"gantry tilt {series.tilt_degrees:.2f} degrees: the NIfTI affine is sheared so that every "
                "slice keeps its recorded position"
            )
        seg, reason = _write_seg(segmenter, series, labels, output_dir / f"{case.name}_seg.dcm")
        outputs += seg
        warnings += [f"no DICOM SEG written: {reason}; the NIfTI mask is written"] if reason else []
    rows = [{"case": case.name, **row} for row in structure_volumes(labels, volume.affine, segmenter.label_names)]
    return CaseResult(case.name, case.path, "ok", outputs, volumes=rows, warnings=warnings)


def _write_seg(
    segmenter: BundleSegmenter, series: DicomSeries, labels: np.ndarray, path: Path
) -> tuple[list[Path], str | None]:
    """The DICOM SEG of ``labels`` over ``series`` when the source allows one: ``([path], None)``, else
    ``([], why not)``."""
    if not labels.any():
        return [], "no foreground predicted (a SEG needs at least one segment)"
    try:
        datasets = read_source_datasets(list(dict.fromkeys(series.files)))  # a multi-frame file once
        reason = seg_obstacle(datasets)
        if reason is None:
            frames = series.frame_numbers if series.is_multiframe else None
            return [
                write_dicom_seg(
                    datasets,
                    labels,
                    path,
                    segmenter.label_names,
                    source_frames=frames,
                    series_description=segmenter.root.name[:64],
                )
            ], None
    except Exception as exc:  # highdicom refuses what the source lacks; the NIfTI mask stands on its own
        logger.debug("%s: SEG not written", path, exc_info=True)
        reason = f"the source does not allow one ({short_reason(exc)})"
    return [], reason


def segment_cases(
    bundle: str | os.PathLike,
    inputs: str | os.PathLike,
    output_dir: str | os.PathLike,
    options: SegmentOptions | None = None,
    *,
    progress: bool = True,
    series_uid: str | None = None,
) -> list[CaseResult]:
    """Segment every case at ``inputs`` with ``bundle``; writes the outputs, ``report.csv`` and ``volumes.csv``.

    Raises :class:`BundleError` / :class:`InputError` when nothing can be run (bundle or input path unusable);
    a failing case is recorded in its :class:`CaseResult`, leaves no file behind, and the others go on.
    ``series_uid`` reads that series from DICOM folders holding several (default: the largest, named in the
    case's warnings). ``options`` chooses how the bundle is loaded (see :func:`load_bundle`).
    """
    segmenter = load_bundle(bundle, options, progress=progress)
    cases = find_cases(inputs)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for number, case in enumerate(cases, start=1):
        if progress:
            print(f"[{number}/{len(cases)}] {case.name} ({case.path})", file=sys.stderr, flush=True)
        result = segment_published(segmenter, case, output_dir, series_uid=series_uid)
        results.append(result)
        for warning in result.warnings if progress else ():
            print(f"  warning: {warning}", file=sys.stderr, flush=True)
    write_tables(output_dir, results)
    return results


def segment_published(
    segmenter: BundleSegmenter,
    case: Case,
    output_dir: Path,
    *,
    series_uid: str | None = None,
    staging_prefix: str = STAGING_PREFIX,
) -> CaseResult:
    """Segment one case in a staging folder (named by ``staging_prefix``) and publish its outputs into
    ``output_dir`` when it succeeds; a failure is returned as a ``"failed"`` result that names the reason."""
    try:
        with staged_folder(output_dir, staging_prefix) as staging:
            result = segment_case(segmenter, case, staging, series_uid=series_uid)
            result.outputs = publish(staging, output_dir, result.outputs)
        return result
    except Exception as exc:  # one bad case must not stop the others; the report names it
        logger.debug("case %s failed", case.name, exc_info=True)
        message = str(exc) if isinstance(exc, (InputError, ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
        return CaseResult(case.name, case.path, "failed", error=message)


def report_row(result: CaseResult) -> dict[str, str]:
    """A case's row of ``report.csv``."""
    return {
        "case": result.case,
        "source": str(result.source),
        "status": result.status,
        "outputs": ";".join(str(p) for p in result.outputs),
        "error": result.error,
        "warnings": " | ".join(result.warnings),
    }


def write_tables(output_dir: Path, results: Sequence[CaseResult]) -> None:
    """``report.csv`` (every case) and, with volume cases, ``volumes.csv`` in ``output_dir``."""
    volume_rows = [row for result in results for row in result.volumes]
    if volume_rows:
        write_csv(output_dir / VOLUMES_FILE, volume_rows)
    write_csv(output_dir / REPORT_FILE, [report_row(r) for r in results])


def format_report(results: Sequence[CaseResult]) -> str:
    """A table of every case: name, status, and its first output (the mask) or its error."""
    rows = [("case", "status", "output or error")]
    rows += [(r.case, r.status, str(r.outputs[0]) if r.status == "ok" else r.error) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{case:<{widths[0]}}  {status:<{widths[1]}}  {detail}" for case, status, detail in rows]
    lines += [f"warning: {r.case}: {warning}" for r in results for warning in r.warnings]
    failed = sum(r.status != "ok" for r in results)
    summary = f"{len(results) - failed} of {len(results)} case(s) segmented"
    lines.append(summary + (f", {failed} failed" if failed else ""))
    return "\n".join(lines)
