"""``--engine local``: the archive's cases one after another in this process, with the same worker code as Ray's.

No process isolation: a case that kills its worker kills the run (rerun the command to resume), and there is no
``--case-timeout``; everything else (outputs, manifest, resume, shards) is the Ray engine's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from common.archive.cases import ArchiveCase
from common.archive.worker import CaseWorker, WorkerSettings

Finished = Callable[[ArchiveCase, dict, int], None]


def run_local(cases: Sequence[ArchiveCase], settings: WorkerSettings, device: str | None, finished: Finished) -> None:
    """Segment ``cases`` in order; ``finished(case, row, attempts)`` after each. Raises
    :class:`common.segment.bundle_metadata.BundleError` when the bundle cannot be loaded."""
    worker = CaseWorker(settings, device)
    for case in cases:
        finished(case, worker.segment(case), 1)
