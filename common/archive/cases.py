"""The cases of an archive: every volume file, picture and DICOM series folder under a root, or image series on a
PACS found with a DICOMweb study query; and a stable split of them into shards.

A case id is the case's path relative to the root (``site_a/ct/0001.nii.gz``, ``site_b/study/series``), or
``<StudyInstanceUID>/<SeriesInstanceUID>`` on a PACS. Each case's outputs are the ones ``segment`` writes for it,
in the output folder's copy of the case's parent folder (``DIR/site_a/ct/0001_seg.nii.gz``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicomweb_client.api import DICOMwebClient

from common.io.dicomweb import (
    STUDY_UID_TAG,
    DicomWebError,
    DicomWebResource,
    _first,
    checked_uid,
    client,
    image_series,
    named_errors,
    parse_resource,
)
from common.io.validation import InputError
from common.segment.inputs import Case, find_cases

logger = logging.getLogger(__name__)

DICOMWEB_KIND = "dicomweb"
STUDY_PAGE = 500  # studies per QIDO-RS request


@dataclass(frozen=True)
class ArchiveCase:
    """One case: ``case_id`` (unique in the archive), ``source`` (a path, or the series' DICOMweb URL), ``kind``
    (``volume``, ``dicom``, ``picture`` or ``dicomweb``), ``folder`` (where its outputs go, relative to the output
    folder) and ``name`` (the stem of its output files, as ``segment`` names the case)."""

    case_id: str
    source: str
    kind: str
    folder: str
    name: str

    def local_case(self) -> Case:
        """The case as ``segment`` reads it (a local file or folder)."""
        return Case(self.name, Path(self.source), self.kind)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1..``count``) of an archive."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``K/N`` with 1 <= K <= N."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            index = count = 0
        if not 1 <= index <= count:
            raise ValueError(f"--shard {text}: expected K/N with 1 <= K <= N (e.g. 2/8)")
        return cls(index, count)

    @property
    def label(self) -> str:
        return f"{self.index}-of-{self.count}"

    def holds(self, case_id: str) -> bool:
        """Whether the case belongs to this shard: a hash of its id, so that adding cases moves no other case."""
        digest = hashlib.sha256(case_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1


def folder_cases(root: Path) -> list[ArchiveCase]:
    """Every case under ``root`` (recursively; sorted by case id), read as ``segment`` reads a folder of cases.

    A folder that holds DICOM files is one series case; other folders are searched; files that are not volumes
    or pictures are skipped. Raises :class:`InputError` when ``root`` does not exist or holds no case.
    """
    if not root.exists():
        raise InputError(f"{root}: no such file or folder; expected the archive's root folder")
    top = root if root.is_dir() else root.parent
    cases = [_archive_case(case, top) for case in _walk(root)]
    if not cases:
        raise InputError(
            f"{root}: no cases found in the folder tree; expected volume files, pictures or DICOM series folders"
        )
    return sorted(cases, key=lambda case: case.case_id)


def _walk(path: Path) -> Iterator[Case]:
    try:
        found = find_cases(path)
    except InputError:  # a folder with no case in it (or a file that is none)
        logger.info("%s: no case", path)
        return
    for case in found:
        if case.kind == "dicom" and case.path != path:  # a sub-folder: a series, or more folders
            yield from _walk(case.path)
        else:
            yield case


def _archive_case(case: Case, top: Path) -> ArchiveCase:
    relative = case.path.relative_to(top) if case.path != top else Path(case.path.name)
    folder = relative.parent.as_posix()
    return ArchiveCase(relative.as_posix(), str(case.path), case.kind, "" if folder == "." else folder, case.name)


def dicomweb_cases(url: str, query: Sequence[str], ca_bundle: Path | None = None) -> list[ArchiveCase]:
    """The image series to segment on a PACS: those of a study or series URL, or of every study that a QIDO-RS
    study query (``KEY=VALUE`` filters, e.g. ``ModalitiesInStudy=CT``, ``StudyDate=20240101-20241231``) finds at
    a DICOMweb root. Outputs are named by SeriesInstanceUID, in the output folder itself, as ``segment`` does."""
    if "/studies/" in url:
        if query:
            raise DicomWebError(f"--query is for a DICOMweb root URL; {url} names a study already")
        resources = [parse_resource(url)]
        root = resources[0].root
    else:
        root = url.rstrip("/")
        filters = dict(_filter(item) for item in query)
        studies = sorted(_studies(client(root, ca_bundle), root, filters))
        if not studies:
            raise DicomWebError(f"QIDO-RS {root}/studies with {filters or 'no filter'}: no study found")
        resources = [DicomWebResource(root, uid) for uid in studies]
    web = client(root, ca_bundle)
    return sorted(
        (
            ArchiveCase(
                f"{resource.study_uid}/{uid}",
                DicomWebResource(root, resource.study_uid, uid).url,
                DICOMWEB_KIND,
                "",
                uid,
            )
            for resource in resources
            for uid in image_series(web, resource)
        ),
        key=lambda case: case.case_id,
    )


def _studies(web: DICOMwebClient, root: str, filters: dict[str, str]) -> set[str]:
    """StudyInstanceUIDs matching ``filters``, a page of :data:`STUDY_PAGE` at a time (a server that ignores the
    offset ends the paging when a page brings nothing new)."""
    studies: set[str] = set()
    while True:
        with named_errors("QIDO-RS", f"{root}/studies"):
            page = web.search_for_studies(search_filters=filters, limit=STUDY_PAGE, offset=len(studies))
        found = {checked_uid(_first(entry, STUDY_UID_TAG), f"QIDO-RS {root}/studies") for entry in page}
        if not found - studies:
            return studies
        studies |= found
        if len(page) < STUDY_PAGE:
            return studies


def _filter(item: str) -> tuple[str, str]:
    key, separator, value = item.partition("=")
    if not separator or not key:
        raise DicomWebError(f"--query {item}: expected KEY=VALUE, a QIDO-RS study attribute (e.g. StudyDate=2024)")
    return key, value
