"""``segment`` on a PACS: ``--input`` a DICOMweb study or series URL, ``--store-to`` a DICOMweb root for the SEGs.

    python -m common segment --bundle B --input http://HOST/dicom-web/studies/<StudyUID>[/series/<SeriesUID>]
                             --output DIR [--series SeriesUID] [--store-to http://HOST/dicom-web] [--ca-bundle PEM]

The image series are retrieved (WADO-RS) into ``DIR/retrieved/<StudyUID>/<SeriesUID>/`` and segmented from there
as any DICOM series folder is (one case per series, named by its SeriesInstanceUID); non-image series (SEG,
RTSTRUCT, SR...) are left out. With ``--store-to`` every DICOM SEG written is sent (STOW-RS) into its source
study, local inputs included; ``DIR/stow.csv`` records each transfer. Credentials: see :mod:`common.io.dicomweb`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from common.io.dicomweb import (
    DEFAULT_ATTEMPTS,
    DicomWebError,
    client,
    image_series,
    is_dicomweb_url,
    parse_resource,
    retrieve_series,
    store_files,
)
from common.io.tables import write_csv

logger = logging.getLogger(__name__)

RETRIEVED_FOLDER = "retrieved"
STOW_FILE = "stow.csv"


def input_location(text: str) -> str | Path:
    """``--input``'s type: a DICOMweb URL stays a string, anything else is a path."""
    return text if is_dicomweb_url(text) else Path(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The DICOMweb options of ``segment``."""
    group = parser.add_argument_group(
        "PACS (DICOMweb)",
        "credentials from GDLA_DICOMWEB_TOKEN, or "
        "GDLA_DICOMWEB_USER and GDLA_DICOMWEB_PASSWORD, or a netrc entry (docs/pacs.md)",
    )
    group.add_argument(
        "--series",
        metavar="SERIES_UID",
        help="segment only this series: of a DICOMweb study URL (default: every image series), or "
        "of a DICOM folder holding several (default: the largest image series, named in the "
        "report with the others)",
    )
    group.add_argument(
        "--store-to",
        metavar="URL",
        help="DICOMweb root (http(s)://HOST/dicom-web) to send each DICOM SEG to, into its study",
    )
    group.add_argument(
        "--ca-bundle",
        type=Path,
        metavar="PEM",
        help="CA certificates to verify the server with (default: the system's; never unverified)",
    )


def retrieve_study(
    url: str,
    output_dir: str | os.PathLike,
    *,
    series: str | None = None,
    ca_bundle: str | os.PathLike | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
) -> Path:
    """WADO-RS the image series ``url`` names (or ``series`` of its study) below ``output_dir/retrieved``.

    ``attempts``: tries per request (see :func:`common.io.dicomweb.client`).

    Returns what to segment: the study folder (one sub-folder per series) or the one series folder.
    """
    resource = parse_resource(url)
    if series:
        resource = replace(resource, series_uid=series)
    web = client(resource.root, ca_bundle, attempts)
    study_folder = Path(output_dir) / RETRIEVED_FOLDER / resource.study_uid
    uids = image_series(web, resource)
    for uid in uids:
        files = retrieve_series(web, resource.root, resource.study_uid, uid, study_folder / uid)
        logger.info("WADO-RS %s/series/%s: %d instance(s)", resource.url, uid, len(files))
    return study_folder / resource.series_uid if resource.series_uid else study_folder


def retrieve_inputs(args: argparse.Namespace) -> str | Path:
    """``segment``'s input to read locally: ``args.input`` itself, or the folder a DICOMweb URL was retrieved to."""
    if not is_dicomweb_url(args.input):
        return args.input
    return retrieve_study(args.input, args.output, series=args.series, ca_bundle=args.ca_bundle)


def store_segs(
    results: Sequence, store_to: str, output_dir: str | os.PathLike, *, ca_bundle: str | os.PathLike | None = None
) -> list[dict]:
    """STOW-RS each DICOM SEG among the results' outputs to ``store_to``; rows of ``output_dir/stow.csv``.

    A failed transfer is recorded (URL, status) and the others go on; the local files stay as they are.
    """
    if not is_dicomweb_url(store_to):
        raise DicomWebError(f"--store-to {store_to}: expected a DICOMweb root URL, http(s)://HOST/dicom-web")
    web = client(store_to, ca_bundle)
    rows = []
    for result in results:
        for path in (p for p in result.outputs if p.name.endswith("_seg.dcm")):
            try:
                store_files(web, store_to.rstrip("/"), [path])
                rows.append({"case": result.case, "file": str(path), "status": "stored", "error": ""})
            except DicomWebError as exc:
                logger.error("%s", exc)
                rows.append({"case": result.case, "file": str(path), "status": "failed", "error": str(exc)})
    if rows:
        write_csv(Path(output_dir) / STOW_FILE, rows)
    return rows


def report_stores(args: argparse.Namespace, results: Sequence) -> bool:
    """With ``--store-to``: send the SEGs, print each transfer; whether all went through."""
    if not args.store_to:
        return True
    try:
        rows = store_segs(results, args.store_to, args.output, ca_bundle=args.ca_bundle)
    except DicomWebError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    for row in rows:
        print(
            f"STOW-RS {row['file']} -> {args.store_to}: {row['status']}"
            + (f" ({row['error']})" if row["error"] else "")
        )
    if not rows:
        print(f"no DICOM SEG to send to {args.store_to}")
    return all(row["status"] == "stored" for row in rows)
