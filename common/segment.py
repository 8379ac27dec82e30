"""``python -m common segment``: segment volumes, DICOM series and 2-D images with a bundle, in their own geometry.

    python -m common segment --bundle BUNDLE_DIR --input PATH --output DIR [--weights FILE] [--device cuda]
                             [--batch-size N] [--precision auto|float32|float16|bfloat16] [--series UID]

``PATH`` is a NIfTI, NRRD or MetaImage file, a DICOM series folder, a 2-D picture (PNG, JPEG, BMP; 2-D bundles),
or a folder of such cases (files, and sub-folders read as DICOM series). The bundle's own ``inference.json``
defines the network, the preprocessing (orientation, intensity scaling) and the slice-wise inferer, so the
masks equal what the bundle's ``inference.json`` writes for the same input. Outputs per case, in ``DIR``:

- volumes: ``<case>_seg.nii.gz`` (uint8 labels, the input's voxel grid and affine) and ``<case>_overlay.png``;
  DICOM series (single-frame or enhanced multi-frame) also ``<case>_seg.dcm``, a DICOM SEG referencing the source
  series, whenever the source allows one (else the case is done with a warning that says why there is no SEG);
- 2-D pictures: the masks the bundle's ``SaveMask2Dd`` writes, at the picture's size (``<case>_seg.png``: 0/255
  for two classes, else label values; multi-label bundles: one 0/255 ``<case>_<channel>.png`` per channel) and
  ``<case>_overlay.png``;

and for the run ``report.csv`` and, with volume cases, ``volumes.csv`` (per-structure volumes in mL). Every input
is validated when read, before the network runs (:mod:`common.io.validation`). A case's outputs are staged and
moved into ``DIR`` only when the case succeeds, so a failed case leaves nothing behind and does not stop the others;
the command ends with a report of every case (with its warnings: which series of several was read, why no SEG was
written) and exits 1 if any failed (2 when the bundle or the input cannot be used at all). ``PATH`` may also be a
DICOMweb study or series URL, and ``--store-to`` sends the DICOM SEGs to a PACS: see :mod:`common.dicomweb_segment`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import get_args

import numpy as np
import pydicom
import torch
import torch.nn as nn
from monai.bundle import ConfigParser
from monai.transforms import Compose

from common import dicomweb_segment
from common.convert import fit_state_dict
from common.inference import Precision, SliceInferer2D
from common.io.dicom_seg import read_source_datasets, seg_obstacle, write_dicom_seg
from common.io.dicom_series import DicomSeries
from common.io.dicomweb import DicomWebError
from common.io.images import PICTURE_SUFFIXES, read_image_2d
from common.io.lazy_volumes import (
    LazyVolume,
    open_lazy_volume,
)
from common.io.mask_saving import SaveMask2Dd
from common.io.staging import publish, staged_folder
from common.io.tables import write_csv
from common.io.validation import short_reason
from common.io.volumes import VOLUME_SUFFIXES, Volume, volume_suffix
from common.io.writers import (
    structure_volumes,
    write_image_overlay,
    write_nifti,
    write_volume_overlay,
)
from common.networks.encoders import read_state_dict
from common.volume_streaming import StreamingPlan, segment_volume, split_readers, streaming_plan

logger = logging.getLogger(__name__)

REPORT_FILE = "report.csv"
VOLUMES_FILE = "volumes.csv"


class BundleError(ValueError):
    """The bundle folder or its weights cannot be used; the message names the file."""


class InputError(ValueError):
    """An input path or case cannot be segmented; the message names the file and what was expected."""


# ----------------------------------------------------------------------------- the bundle


@dataclass
class BundleSegmenter:
    """A bundle's network, preprocessing and inferer, as its ``configs/inference.json`` defines them.

    ``readers`` are the config's leading loading transforms (used as they are for 2-D pictures; volumes are read
    with :func:`common.io.volumes.load_volume`, which also reads NRRD, MetaImage and DICOM); ``preprocessing``
    is everything after them (orientation, intensity scaling, typing), inverted on the prediction afterwards.
    ``label_names`` maps label values 1.. to names; multi-label bundles (sigmoid, overlapping binary channels)
    have ``channel_names`` instead, one per output channel.
    """

    root: Path
    network: nn.Module
    readers: Compose
    preprocessing: Compose
    inferer: SliceInferer2D
    label_names: dict[int, str]
    channel_names: list[str] | None
    num_classes: int
    num_channels: int
    spatial_dims: int

    @property
    def output_channels(self) -> int:
        """Channels of the inferer's output: 1 (a label map), or one binary channel per class (multi-label)."""
        return len(self.channel_names) if self.channel_names else 1

    @cached_property
    def streaming(self) -> StreamingPlan | None:
        """The bundle's preprocessing and inferer as a slab-by-slab plan, or ``None`` if they must run whole."""
        return streaming_plan(self.preprocessing, self.inferer)

    def segment_volume(self, volume: Volume | LazyVolume, *, streaming: bool = True) -> np.ndarray:
        """Labels ``[X, Y, Z]`` (uint8) of ``volume`` (``[X, Y, Z]`` or ``[X, Y, Z, C]``) on its own voxel grid.

        With ``streaming`` (and a bundle pipeline that allows it, :attr:`streaming`) the volume is read, scaled,
        segmented and written a few slices at a time (:func:`common.volume_streaming.segment_volume`): same
        labels, and memory bounded by the input plus a uint8 label volume. Otherwise it is processed whole.
        """
        if self.channel_names:
            raise InputError(f"{volume.path}: the multi-label bundle {self.root.name} segments 2-D pictures only")
        shape = volume.shape if isinstance(volume, LazyVolume) else volume.array.shape
        self._check_channels(1 if len(shape) == 3 else shape[3], volume.path, shape)
        try:
            return segment_volume(self.network, self.preprocessing, self.inferer, volume, streaming=streaming)
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    def segment_picture(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(the picture as read ``[C, H, W]``, uint8 labels ``[K', H, W]``) for a 2-D picture file.

        ``K'`` is :attr:`output_channels`: a label map ``[1, H, W]`` or binary channels ``[K, H, W]``.
        """
        data = self.readers({"image": str(path)})
        self._check_channels(data["image"].shape[0], path, tuple(data["image"].shape))
        data = self.preprocessing(data)
        labels = self.inferer(data["image"].unsqueeze(0), self.network)[0]
        return read_image_2d(path), self._checked_labels(labels, tuple(data["image"].shape[1:]), path)

    def mask_writer(self, output_dir: Path) -> SaveMask2Dd:
        """The bundles' 2-D mask writer for this bundle's outputs, writing into ``output_dir``."""
        return SaveMask2Dd("pred", output_dir, self.num_classes, channel_names=self.channel_names)

    def _check_channels(self, found: int, path: Path, shape: tuple[int, ...]) -> None:
        if found != self.num_channels:
            raise InputError(
                f"{path}: the bundle {self.root.name} expects {self.num_channels}-channel images; "
                f"found {found} channel(s) (array shape {tuple(shape)})"
            )

    def _checked_labels(self, labels: torch.Tensor, shape: Sequence[int], path: Path) -> np.ndarray:
        """The inferer's ``[K', *shape]`` labels as numpy uint8, after checking their shape."""
        array = labels.detach().cpu().numpy()
        expected = (self.output_channels, *shape)
        if array.shape != expected:
            raise InputError(
                f"{path}: the bundle's inferer returned shape {array.shape}; expected {expected} "
                "(its inferer must output labels: a label map, or binary channels for a multi-label bundle)"
            )
        return array.astype(np.uint8)


def default_device() -> str:
    """``"cuda"`` when a GPU is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_bundle(
    bundle: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    precision: Precision | None = None,
    network: nn.Module | None = None,
    progress: bool = False,
) -> BundleSegmenter:
    """Read ``bundle``'s ``configs/inference.json`` and ``configs/metadata.json`` and load its network.

    ``weights`` replaces ``models/model.pt`` (a state dict, read with ``weights_only=True``); ``network`` replaces
    the bundle's network altogether (weights are then not read). ``batch_size`` (slices per forward pass) and
    ``precision`` (see :class:`common.inference.SliceInferenceOptions`) override the config's inferer;
    ``progress`` shows a bar over slices.
    """
    root = Path(bundle)
    config_file, meta_file = root / "configs" / "inference.json", root / "configs" / "metadata.json"
    for path in (config_file, meta_file):
        if not path.is_file():
            raise BundleError(
                f"{path}: not found; expected a MONAI bundle folder with configs/inference.json "
                "and configs/metadata.json"
            )
    meta = _read_json(meta_file)
    try:
        formats = meta["network_data_format"]
        num_channels = int(formats["inputs"]["image"]["num_channels"])
        channel_def = {int(k): str(v) for k, v in formats["outputs"]["pred"]["channel_def"].items()}
        multilabel = formats["outputs"]["pred"].get("format") == "classes"  # sigmoid channels, not a label map
        spatial_dims = {"nifti": 3, "png": 2}[meta["data_type"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(
            f"{meta_file}: expected data_type 'nifti' or 'png' and network_data_format with inputs.image.num_channels "
            f"and outputs.pred.channel_def ({type(exc).__name__}: {exc})"
        ) from exc
    device = torch.device(device or default_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BundleError(f"device {device}: no CUDA device is available; use --device cpu")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(root)
    parser["inferer#progress"] = progress
    if batch_size is not None:
        parser["inferer#sw_batch_size"] = batch_size
    if precision is not None:
        parser["inferer#precision"] = precision
    try:
        pipeline = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer")
        if network is None:
            network = _network_with_weights(parser, Path(weights) if weights else root / "models" / "model.pt")
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(
            f"{config_file}: cannot build the bundle's inference pipeline ({type(exc).__name__}: {exc})"
        ) from exc
    readers, preprocessing = split_readers(pipeline)
    return BundleSegmenter(
        root=root,
        network=network.to(device).eval(),
        readers=readers,
        preprocessing=preprocessing,
        inferer=inferer,
        label_names={} if multilabel else {value: name for value, name in channel_def.items() if value > 0},
        channel_names=[channel_def[k] for k in sorted(channel_def)] if multilabel else None,
        num_classes=len(channel_def),
        num_channels=num_channels,
        spatial_dims=spatial_dims,
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable JSON file ({exc})") from exc


def _network_with_weights(parser: ConfigParser, weights: Path) -> nn.Module:
    """The config's ``network_def`` with the state dict in ``weights`` (ours, or an authors' checkpoint)."""
    if not weights.is_file():
        raise BundleError(
            f"{weights}: model weights not found; train the bundle (configs/train.json) or pass --weights"
        )
    try:
        state = read_state_dict(weights)
    except ValueError as exc:
        raise BundleError(str(exc)) from exc
    network = parser.get_parsed_content("network_def")
    try:
        network.load_state_dict(fit_state_dict(network, state))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        raise BundleError(f"{weights}: these weights do not fit the bundle's network_def ({detail[0]} ...)") from exc
    return network


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One input: ``kind`` is ``"volume"`` (a volume file), ``"dicom"`` (a series folder) or ``"picture"``."""

    name: str
    path: Path
    kind: str


def find_cases(path: str | os.PathLike) -> list[Case]:
    """The cases at ``path``: one file, one DICOM series folder, or every case inside a folder.

    In a folder of cases, volume files and pictures are cases, and so is every sub-folder (read as a DICOM
    series); other files are skipped (and logged). Names are file names without suffix; a name already taken
    keeps its suffix (``a.nii.gz`` and ``a.nrrd`` become cases ``a`` and ``a.nrrd``).
    """
    path = Path(path)
    if path.is_file():
        return [_file_case(path, set())]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    if _holds_dicom_files(path):
        return [Case(path.name, path, "dicom")]
    cases: list[Case] = []
    taken: set[str] = set()
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            case = Case(entry.name, entry, "dicom")
        elif volume_suffix(entry) or entry.suffix.lower() in PICTURE_SUFFIXES:
            case = _file_case(entry, taken)
        else:
            logger.info("%s: skipped (not a volume, picture or DICOM folder)", entry)
            continue
        taken.add(case.name)
        cases.append(case)
    if not cases:
        raise InputError(
            f"{path}: no cases found; expected volume files ({', '.join(VOLUME_SUFFIXES)}), pictures "
            f"({', '.join(PICTURE_SUFFIXES)}) or DICOM series folders"
        )
    return cases


def _file_case(path: Path, taken: set[str]) -> Case:
    suffix = volume_suffix(path)
    if suffix:
        kind = "volume"
    elif path.suffix.lower() in PICTURE_SUFFIXES:
        kind, suffix = "picture", path.suffix
    else:
        raise InputError(
            f"{path}: not a volume or picture; expected one of {', '.join(VOLUME_SUFFIXES + PICTURE_SUFFIXES)}, "
            "or a DICOM series folder"
        )
    stem = path.name[: -len(suffix)]
    return Case(stem if stem not in taken else path.name, path, kind)


def _holds_dicom_files(folder: Path) -> bool:
    """Whether ``folder`` itself holds DICOM files (``.dcm`` or a DICM preamble), i.e. is a series folder."""
    return any(
        entry.is_file() and (entry.suffix.lower() == ".dcm" or pydicom.misc.is_dicom(entry))
        for entry in folder.iterdir()
        if not entry.name.startswith(".")
    )


# ----------------------------------------------------------------------------- segmenting


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
    outputs.append(write_image_overlay(picture, preview_labels(labels), output_dir / f"{case.name}_overlay.png"))
    return CaseResult(case.name, case.path, "ok", outputs)


def _segment_volume_case(
    segmenter: BundleSegmenter, case: Case, output_dir: Path, series_uid: str | None = None
) -> CaseResult:
    volume = open_lazy_volume(case.path, series_uid=series_uid if case.kind == "dicom" else None)
    series = volume.series
    labels = segmenter.segment_volume(volume)
    outputs = [
        write_nifti(labels, volume.affine, output_dir / f"{case.name}_seg.nii.gz"),
        write_volume_overlay(volume, labels, volume.affine, output_dir / f"{case.name}_overlay.png"),
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
    *,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    precision: Precision | None = None,
    network: nn.Module | None = None,
    progress: bool = True,
    series_uid: str | None = None,
) -> list[CaseResult]:
    """Segment every case at ``inputs`` with ``bundle``; writes the outputs, ``report.csv`` and ``volumes.csv``.

    Raises :class:`BundleError` / :class:`InputError` when nothing can be run (bundle or input path unusable);
    a failing case is recorded in its :class:`CaseResult`, leaves no file behind, and the others go on.
    ``series_uid`` reads that series from DICOM folders holding several (default: the largest, named in the
    case's warnings). See :func:`load_bundle` for the other options.
    """
    segmenter = load_bundle(
        bundle,
        weights=weights,
        device=device,
        batch_size=batch_size,
        precision=precision,
        network=network,
        progress=progress,
    )
    cases = find_cases(inputs)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for number, case in enumerate(cases, start=1):
        if progress:
            print(f"[{number}/{len(cases)}] {case.name} ({case.path})", file=sys.stderr, flush=True)
        try:
            with staged_folder(output_dir) as staging:
                result = segment_case(segmenter, case, staging, series_uid=series_uid)
                result.outputs = publish(staging, output_dir, result.outputs)
            results.append(result)
            for warning in result.warnings if progress else ():
                print(f"  warning: {warning}", file=sys.stderr, flush=True)
        except Exception as exc:  # one bad case must not stop the others; the report names it
            logger.debug("case %s failed", case.name, exc_info=True)
            message = str(exc) if isinstance(exc, (InputError, ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
            results.append(CaseResult(case.name, case.path, "failed", error=message))
    volume_rows = [row for result in results for row in result.volumes]
    if volume_rows:
        write_csv(output_dir / VOLUMES_FILE, volume_rows)
    write_csv(
        output_dir / REPORT_FILE,
        [
            {
                "case": r.case,
                "source": str(r.source),
                "status": r.status,
                "outputs": ";".join(str(p) for p in r.outputs),
                "error": r.error,
                "warnings": " | ".join(r.warnings),
            }
            for r in results
        ],
    )
    return results


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


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Segment volumes, DICOM series or 2-D pictures with a bundle, keeping the input's geometry."
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (configs/inference.json, models/)")
    parser.add_argument(
        "--input",
        type=dicomweb_segment.input_location,
        required=True,
        help="a NIfTI/NRRD/MHA file, a DICOM series folder, a PNG/JPEG/BMP picture, "
        "a folder of cases, or a DICOMweb study/series URL (docs/pacs.md)",
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for the masks, previews and tables")
    parser.add_argument("--weights", type=Path, help="state dict to use instead of BUNDLE/models/model.pt")
    parser.add_argument("--device", help="where the network runs (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, help="slices per forward pass (default: the bundle's)")
    parser.add_argument(
        "--precision",
        choices=get_args(Precision),
        help="network arithmetic (default: the bundle's, 'auto': float16 autocast on CUDA, bfloat16 "
        "on CPUs with native bfloat16, else float32; 'float32' is the authors' arithmetic)",
    )
    dicomweb_segment.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        inputs = dicomweb_segment.retrieve_inputs(args)  # a DICOMweb URL is retrieved into the output folder
        results = segment_cases(
            args.bundle,
            inputs,
            args.output,
            weights=args.weights,
            device=args.device,
            batch_size=args.batch_size,
            precision=args.precision,
            series_uid=args.series,
        )
    except (BundleError, InputError, DicomWebError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(results))
    if any(result.volumes for result in results):
        print(f"per-structure volumes (mL): {args.output / VOLUMES_FILE}")
    print(f"report: {args.output / REPORT_FILE}")
    stored = dicomweb_segment.report_stores(args, results)
    return 1 if any(r.status != "ok" for r in results) or not stored else 0
