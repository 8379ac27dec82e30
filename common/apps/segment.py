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
DICOMweb study or series URL, and ``--store-to`` sends the DICOM SEGs to a PACS: see :mod:`common.pacs.dicomweb_segment`.

This module is the command line; the work is done by :mod:`common.segment.segmenter` (the bundle, loaded),
:mod:`common.segment.inputs` (what ``PATH`` holds) and :mod:`common.segment.cases` (segmenting and writing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

from common.inference.precision import Precision
from common.io.dicomweb import DicomWebError
from common.io.validation import InputError
from common.pacs import dicomweb_segment
from common.segment.bundle_metadata import BundleError
from common.segment.cases import REPORT_FILE, VOLUMES_FILE, format_report, segment_cases
from common.segment.segmenter import SegmentOptions


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
    parser.add_argument(
        "--batch-size", type=int, help="slices in flight at once, which bounds memory (default: the bundle's)"
    )
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
            SegmentOptions(
                weights=args.weights, device=args.device, batch_size=args.batch_size, precision=args.precision
            ),
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
