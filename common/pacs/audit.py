"""The node's audit trail: one JSON object a line in ``OUTPUT/audit.jsonl`` per association (or refused connection).

Each line is appended, flushed and synced on its own, so a crash loses at most the association in progress; a line
that cannot be written (disk full) is logged and the node goes on.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

AUDIT_FILE = "audit.jsonl"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class AssociationRecord:
    """What the audit trail says about one association: who, over what, the outcome and what was received.

    ``outcome`` is ``accepted`` or ``rejected`` (association) or ``refused`` (a TLS connection that never became
    an association); ``reason`` is the rejection reason, or for an accepted one how it ended (released, aborted,
    closed). ``refused_instances`` counts the C-STOREs answered with a failure status.
    """

    peer_address: str
    peer_port: int
    opened: str = field(default_factory=utc_now)
    time: str = ""
    calling_ae: str = ""
    called_ae: str = ""
    tls_subject: str = ""
    outcome: str = ""
    reason: str = ""
    instances: int = 0
    bytes: int = 0
    refused_instances: int = 0
    series_uids: set[str] = field(default_factory=set, repr=False)

    def as_line(self) -> dict:
        """The JSON object of the audit line: when, the outcome, who, what was received (series as a count)."""
        line = asdict(self)
        series = len(line.pop("series_uids"))
        first = ("time", "opened", "outcome", "reason", "calling_ae", "called_ae", "peer_address", "peer_port")
        return {**{key: line.pop(key) for key in (*first, "tls_subject")}, "series": series, **line}


class AuditTrail:
    """Appends :class:`AssociationRecord` lines to ``folder/audit.jsonl`` (thread-safe) and logs each one."""

    def __init__(self, folder: Path, logger: logging.Logger) -> None:
        self.path = Path(folder) / AUDIT_FILE
        self.logger = logger
        self._lock = threading.Lock()

    def write(self, record: AssociationRecord) -> None:
        record.time = utc_now()
        line = record.as_line()
        self.logger.info("audit: %s", json.dumps(line))
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        with self._lock:
            try:
                _append(self.path, data)
            except OSError as exc:
                self.logger.error("audit: cannot append to %s (%s); the line is only in this log", self.path, exc)


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` in one write and sync it; a short or failed write is cut off again (no torn line)."""
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(handle).st_size
        try:
            if os.write(handle, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(handle)
        except OSError:
            os.ftruncate(handle, size)
            raise
    finally:
        os.close(handle)
