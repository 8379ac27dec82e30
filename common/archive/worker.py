"""One archive worker: the bundle loaded once, then one case at a time, segmented exactly as ``segment`` does.

A case's outputs are staged in a folder named after this worker (``.staging-<host>.<pid>.*``) and published into
the case's output folder when it succeeds (:func:`common.segment.cases.segment_published`), so the driver can
remove what a killed worker left behind. The result is a manifest row (paths relative to the output folder).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from common.archive.cases import DICOMWEB_KIND, ArchiveCase
from common.io.dicomweb import DicomWebError, client, parse_resource, retrieve_series, store_files
from common.io.staging import STAGING_PREFIX
from common.pacs.dicomweb_segment import RETRIEVED_FOLDER
from common.segment.cases import CaseResult, segment_published
from common.segment.inputs import Case
from common.segment.segmenter import SegmentOptions, load_bundle

_STAGING_NAME = re.compile(rf"^{re.escape(STAGING_PREFIX)}(?P<host>.+)\.(?P<pid>\d+)\.[^.]+$")


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker needs (small values only: they travel to each Ray actor)."""

    bundle: str
    output: str
    options: SegmentOptions = field(default_factory=SegmentOptions)  # weights, batch size, precision; no network
    threads: int | None = None  # torch threads; None keeps torch's default
    store_to: str | None = None
    ca_bundle: str | None = None


def staging_prefix(host: str, pid: int) -> str:
    """The staging folder prefix of the worker process ``pid`` on ``host``."""
    return f"{STAGING_PREFIX}{host}.{pid}."


def remove_staging(folder: Path, host: str, pid: int) -> None:
    """Remove the staging folders the (dead) worker ``host``/``pid`` left in ``folder``."""
    for path in folder.glob(f"{staging_prefix(host, pid)}*"):
        shutil.rmtree(path, ignore_errors=True)


def remove_dead_stagings(output: Path) -> list[Path]:
    """Remove every staging folder under ``output`` whose writer ran on this host and is gone (a run killed
    before it could clean up); folders of live processes and of other hosts are left alone."""
    host, removed = socket.gethostname(), []
    for folder, names, _ in os.walk(output):
        for name in [n for n in names if n.startswith(STAGING_PREFIX)]:
            names.remove(name)
            match = _STAGING_NAME.match(name)
            if match and match["host"] == host and not process_alive(int(match["pid"])):
                shutil.rmtree(Path(folder) / name, ignore_errors=True)
                removed.append(Path(folder) / name)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CaseWorker:
    """The bundle on ``device``, segmenting one :class:`ArchiveCase` at a time into ``settings.output``."""

    def __init__(self, settings: WorkerSettings, device: str | None = None):
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.output = Path(settings.output)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.segmenter = load_bundle(settings.bundle, replace(settings.options, device=device))
        self.device = str(next(self.segmenter.network.parameters(), torch.empty(0)).device)

    def identity(self) -> dict[str, object]:
        """Where this worker runs: host, pid and device (manifest columns)."""
        return {"host": self.host, "pid": self.pid, "device": self.device}

    def segment(self, case: ArchiveCase) -> dict[str, object]:
        """Segment ``case``; a manifest row (without ``attempts``, which the driver counts)."""
        started = time.monotonic()
        folder = self.output / case.folder
        try:
            local = self._local_case(case)
            result = segment_published(
                self.segmenter, local, folder, staging_prefix=staging_prefix(self.host, self.pid)
            )
            if result.status == "ok" and self.settings.store_to:
                self._store(result)
        except DicomWebError as exc:
            result = CaseResult(case.name, Path(case.source), "failed", error=str(exc))
        return {
            "case": case.case_id,
            "source": case.source,
            "status": result.status,
            "outputs": [str(path.relative_to(self.output)) for path in result.outputs],
            "error": result.error,
            "warnings": result.warnings,
            "volumes": [{**row, "case": case.case_id} for row in result.volumes],
            "seconds": round(time.monotonic() - started, 3),
            **self.identity(),
        }

    def _local_case(self, case: ArchiveCase) -> Case:
        """The case as a local file or folder: a PACS series is retrieved (WADO-RS) below ``retrieved/`` first."""
        if case.kind != DICOMWEB_KIND:
            return case.local_case()
        resource = parse_resource(case.source)
        web = client(resource.root, self.settings.ca_bundle)
        folder = self.output / RETRIEVED_FOLDER / resource.study_uid / str(resource.series_uid)
        retrieve_series(web, resource.root, resource.study_uid, str(resource.series_uid), folder)
        return Case(case.name, folder, "dicom")

    def _store(self, result: CaseResult) -> None:
        """STOW-RS the case's DICOM SEG into its study (a refusal fails the case: rerunning it sends it again)."""
        store_to = str(self.settings.store_to).rstrip("/")
        segs = [path for path in result.outputs if path.name.endswith("_seg.dcm")]
        if segs:
            store_files(client(store_to, self.settings.ca_bundle), store_to, segs)
            result.warnings.append(f"DICOM SEG stored to {store_to}")
