"""``python -m common listen``: a DICOM node that segments every image series it receives and sends back the SEG.

    python -m common listen --bundle B --port 11112 --ae-title GDLA --store-to ORTHANC@pacs.example:4242
                            [--allow AET@HOST ...] [--allow-file FILE] [--host ADDRESS] [--reserve-gb 5]
                            [--tls-cert CERT --tls-key KEY --tls-ca CA [--store-tls]]
                            [--output DIR] [--quiet-seconds 10] [--store-retries 3] [--retry-delay 5]
                            [--retry-failed] [--weights FILE] [--device cpu]

A Storage SCP (``pynetdicom``) answering C-ECHO and C-STORE of any storage SOP class. Instances are written as
they arrive to ``DIR/incoming/<SeriesInstanceUID>/``; a series with no new instance for ``--quiet-seconds`` is
complete and moves to ``DIR/queue/<job>/`` (``<job>`` = arrival time and SeriesInstanceUID). One worker segments
the queued series one at a time (associations are accepted however long the queue), writes the outputs
to ``DIR/results/<job>/`` and C-STOREs the DICOM SEG to ``--store-to``. Per series, ``DIR/series.csv`` gets a row
(status ``stored``, ``unsent``, ``no-foreground``, ``skipped`` for non-image series such as SEGs, or
``failed``) and ``DIR/node.log`` the details. A series that fails stays in ``DIR/failed/<job>/`` with the error
in ``error.txt`` (``--retry-failed`` queues them again at start). An unreachable destination is retried with
back-off (``--store-retries`` attempts, ``--retry-delay`` doubling); then the SEG waits in ``DIR/unsent/`` and
is sent after the next successful delivery or at the next start. SIGINT/SIGTERM stop accepting associations,
finish the series in work and stop; queued and partly received series are taken up at the next start.

Security (docs/pacs.md, "Security"): only registered senders (``--allow``/``--allow-file``; without them loopback
peers only, listening on 127.0.0.1) calling this node's AE title are accepted; others get A-ASSOCIATE-RJ. While
the free space under ``DIR`` is below ``--reserve-gb`` new associations are rejected as transient and C-STOREs
answered 0xA700. ``--tls-*`` turn on mutual DICOM TLS (``--store-tls`` for the SEG's C-STORE too). Every
association and its outcome is a line of ``DIR/audit.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import queue
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import get_args

import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from common.inference.precision import Precision
from common.io.atomic import atomic_path
from common.io.dicomweb import NON_IMAGE_MODALITIES
from common.pacs.audit import AssociationRecord, AuditTrail
from common.pacs.disk_reserve import DiskReserve
from common.pacs.senders import (
    LOOPBACK_SENDERS,
    AllowedSender,
    SenderEntryError,
    is_allowed,
    is_loopback_host,
    parse_sender,
    read_allow_file,
)
from common.pacs.tls import TlsFiles, TlsSetupError, client_context, peer_subject, server_context
from common.segment.bundle_metadata import BundleError
from common.segment.cases import segment_case
from common.segment.inputs import Case
from common.segment.segmenter import BundleSegmenter, SegmentOptions, load_bundle

logger = logging.getLogger(__name__)

SERIES_CSV = "series.csv"
LOG_FILE = "node.log"
CSV_COLUMNS = (
    "finished",
    "job",
    "study_uid",
    "series_uid",
    "modality",
    "instances",
    "calling_ae",
    "status",
    "seg_file",
    "destination",
    "seconds",
    "error",
)
#: C-STORE statuses: success, and the warnings that still mean "stored" (coercion, elements discarded).
STORED_STATUSES = (0x0000, 0xB000, 0xB006, 0xB007)
CANNOT_UNDERSTAND = 0xC210
MAX_ASSOCIATIONS = 32  # simultaneous senders; a busy worker never refuses one (the queue grows instead)
OUT_OF_RESOURCES = 0xA700
LOOPBACK_HOST = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"
DEFAULT_RESERVE_GB = 5.0
#: A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4: permanent, by the service user, calling / called AE title
#: not recognised; transient, by the service provider (presentation related), local limit exceeded.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
_DESTINATION = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    """A DICOM node to C-STORE to: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AET@HOST:PORT`` (e.g. ``ORTHANC@127.0.0.1:4242``) as a :class:`Destination`."""
    match = _DESTINATION.match(text.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected AET@HOST:PORT, e.g. ORTHANC@pacs.example:4242 "
            "(AE title of at most 16 characters, port 1-65535)"
        )
    return Destination(match["aet"], match["host"], int(match["port"]))


@dataclass
class NodeSettings:
    """Where and how the node listens, stores and sends (see the module docstring for the options)."""

    output: Path
    port: int
    ae_title: str = "GDLA"
    host: str = LOOPBACK_HOST
    destination: Destination | None = None
    allow: tuple[AllowedSender, ...] = ()  # registered senders; none: loopback peers only
    reserve_gb: float = DEFAULT_RESERVE_GB
    tls: TlsFiles | None = None  # mutual DICOM TLS for accepted associations
    store_tls: bool = False  # the C-STORE to the destination over TLS too (needs ``tls``)
    quiet_seconds: float = 10.0
    store_retries: int = 3
    retry_delay: float = 5.0
    retry_failed: bool = False
    network_timeout: float = 30.0

    @property
    def senders(self) -> tuple[AllowedSender, ...]:
        return self.allow or LOOPBACK_SENDERS


class NodeSetupError(ValueError):
    """Settings the node cannot start with; the message says what to change."""


def check_settings(settings: NodeSettings) -> None:
    """Refuse settings that expose the node or cannot work, before anything starts (TLS files are loaded)."""
    if not settings.allow and not is_loopback_host(settings.host):
        raise NodeSetupError(
            f"--host {settings.host}: listening beyond this machine needs registered senders: --allow AET@HOST "
            "(e.g. --allow PACS@10.1.2.3 or PACS@10.1.2.0/24; repeatable) or --allow-file FILE "
            "(--allow '*@*' accepts anyone)"
        )
    if settings.reserve_gb < 0:
        raise NodeSetupError(f"--reserve-gb {settings.reserve_gb}: expected a number of GB >= 0 (0 turns it off)")
    if settings.store_tls and settings.tls is None:
        raise NodeSetupError("--store-tls: needs the node's certificate: --tls-cert, --tls-key and --tls-ca")
    if settings.tls is not None:
        server_context(settings.tls)
        if settings.store_tls:
            client_context(settings.tls)


@dataclass
class _Arrival:
    """A series being received: when its last instance came, from whom, how many instances."""

    last_seen: float
    calling_ae: str
    instances: int = 0


@dataclass
class DicomNode:
    """The listening node: a Storage SCP, a quiet-period watcher and one segmenting worker (threads)."""

    segmenter: BundleSegmenter
    settings: NodeSettings
    _arrivals: dict[str, _Arrival] = field(default_factory=dict)
    _associations: dict[Association, AssociationRecord] = field(default_factory=dict)
    _callers: dict[str, str] = field(default_factory=dict)
    _jobs: queue.Queue = field(default_factory=queue.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _server: object = None
    _audit: AuditTrail | None = None
    _reserve: DiskReserve | None = None
    _store_tls: object = None  # the ssl.SSLContext of outgoing associations, with --store-tls
    on_result: Callable[[dict], None] | None = None  # called with each series.csv row (tests, monitoring)

    # ------------------------------------------------------------------ folders

    def folder(self, name: str) -> Path:
        path = self.settings.output / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Check the settings, take up work left from a previous run, then listen and start the watcher and worker."""
        settings = self.settings
        check_settings(settings)
        for name in ("incoming", "queue", "results", "failed", "unsent"):
            self.folder(name)
        self._audit = AuditTrail(settings.output, logger)
        self._reserve = DiskReserve(settings.output, settings.reserve_gb, logger)
        self._store_tls = client_context(settings.tls) if settings.store_tls else None
        self._resume()
        ae = AE(ae_title=settings.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = settings.network_timeout
        ae.maximum_associations = MAX_ASSOCIATIONS
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        tls = server_context(settings.tls, self._on_tls_failure) if settings.tls else None
        self._server = ae.start_server(
            (settings.host, settings.port), block=False, ssl_context=tls, evt_handlers=handlers
        )
        for target, name in ((self._watch, "quiet-period watcher"), (self._work, "segmenting worker")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            "listening as %s on %s:%d; destination %s%s; output %s",
            settings.ae_title,
            settings.host,
            settings.port,
            settings.destination or "none",
            " (TLS)" if self._store_tls else "",
            settings.output,
        )
        self._log_security()

    def _log_security(self) -> None:
        settings = self.settings
        if settings.allow:
            logger.info("registered senders: %s", ", ".join(str(sender) for sender in settings.allow))
        else:
            logger.info(
                "no --allow: loopback peers only (any AE title from %s), listening on %s; "
                "register senders with --allow AET@HOST to accept others",
                " or ".join(str(sender.network) for sender in LOOPBACK_SENDERS),
                settings.host,
            )
        for sender in settings.allow:
            if sender.network is None:
                logger.warning("--allow %s: accepted from ANY address (anyone who can reach the port)", sender)
        logger.info(
            "DICOM TLS: %s; disk reserve: %s; audit trail: %s",
            f"on (client certificates signed by {settings.tls.ca} required)" if settings.tls else "off",
            f"{settings.reserve_gb:g} GB" if settings.reserve_gb > 0 else "off",
            self._audit.path,
        )

    def stop(self) -> None:
        """Stop accepting associations, let the worker finish its current series, and wait for it."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        logger.info(
            "stopped; %d series left queued in %s", len(list(self.folder("queue").iterdir())), self.folder("queue")
        )

    def _resume(self) -> None:
        now = time.monotonic()
        for folder in sorted(self.folder("incoming").iterdir()):
            self._arrivals[folder.name] = _Arrival(now, "(previous run)", len(list(folder.glob("*.dcm"))))
        if self.settings.retry_failed:
            for folder in sorted(self.folder("failed").iterdir()):
                (folder / "error.txt").unlink(missing_ok=True)
                folder.rename(self.folder("queue") / folder.name)
        for folder in sorted(self.folder("queue").iterdir()):
            self._jobs.put(folder)
            logger.info("series %s: queued again from a previous run", folder.name)

    # ------------------------------------------------------------------ the Storage SCP (association threads)

    def _association_record(self, assoc: Association) -> AssociationRecord:
        with self._lock:
            return self._associations.setdefault(
                assoc, AssociationRecord(assoc.requestor.address, assoc.requestor.port)
            )

    def _on_connection(self, event: evt.Event) -> None:
        host, port = event.address[:2]
        record = AssociationRecord(host, port, tls_subject=peer_subject(event.assoc.dul.socket.socket))
        with self._lock:
            self._associations[event.assoc] = record

    def _on_requested(self, event: evt.Event) -> None:
        """Reject an association whose called AE title, calling AE title and address, or timing (reserve) is wrong."""
        request = event.assoc.requestor.primitive
        record = self._association_record(event.assoc)
        record.calling_ae, record.called_ae = request.calling_ae_title.strip(), request.called_ae_title.strip()
        if record.called_ae != self.settings.ae_title.strip():
            reason = f"called AE title {record.called_ae!r} is not this node's ({self.settings.ae_title})"
            self._reject(event.assoc, record, REJECT_CALLED_AE, reason)
        elif not is_allowed(self.settings.senders, record.calling_ae, record.peer_address):
            reason = f"calling AE title {record.calling_ae!r} from {record.peer_address} is not a registered sender"
            self._reject(event.assoc, record, REJECT_CALLING_AE, reason)
        elif self._reserve.is_below():
            self._reject(event.assoc, record, REJECT_LOCAL_LIMIT, "free disk space below the reserve (transient)")

    def _reject(self, assoc: Association, record: AssociationRecord, rejection: tuple[int, int, int], reason: str):
        logger.warning(
            "association from %s@%s:%d rejected: %s", record.calling_ae, record.peer_address, record.peer_port, reason
        )
        record.outcome, record.reason = "rejected", reason
        assoc.acse.send_reject(*rejection)  # pynetdicom skips its own negotiation after a reject in EVT_REQUESTED
        assoc.kill()

    def _on_established(self, event: evt.Event) -> None:
        self._association_record(event.assoc).outcome = "accepted"

    def _on_released(self, event: evt.Event) -> None:
        self._association_record(event.assoc).reason = "released"

    def _on_aborted(self, event: evt.Event) -> None:
        self._association_record(event.assoc).reason = "aborted"
        logger.warning(
            "association from %s (%s) aborted; instances received so far are kept",
            event.assoc.requestor.ae_title,
            event.assoc.requestor.address,
        )

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            record = self._associations.pop(event.assoc, None)
        if record is None:
            return
        if not record.outcome:
            record.outcome, record.reason = "no association", "connection closed before an association was agreed"
        elif not record.reason:
            record.reason = "connection closed"
        self._audit.write(record)

    def _on_tls_failure(self, peer: tuple[str, int], reason: str) -> None:
        logger.warning("connection from %s:%d refused: TLS handshake failed (%s)", peer[0], peer[1], reason)
        record = AssociationRecord(peer[0], peer[1], outcome="no association", reason=f"TLS handshake failed: {reason}")
        self._audit.write(record)

    def _on_echo(self, event: evt.Event) -> int:
        logger.info("C-ECHO from %s (%s)", event.assoc.requestor.ae_title, event.assoc.requestor.address)
        return 0x0000

    def _on_store(self, event: evt.Event) -> int:
        caller = f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
        record = self._association_record(event.assoc)
        try:
            dataset = event.dataset
            series_uid, sop_uid = str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID)
            if not pydicom.uid.UID(series_uid).is_valid or not pydicom.uid.UID(sop_uid).is_valid:
                raise ValueError(f"invalid UIDs (series {series_uid!r}, instance {sop_uid!r})")
            encoded = event.encoded_dataset()
        except Exception as exc:  # a malformed instance is refused; the association and the node go on
            logger.error("C-STORE from %s refused: cannot read the instance (%s: %s)", caller, type(exc).__name__, exc)
            record.refused_instances += 1
            return CANNOT_UNDERSTAND
        with self._lock:
            if self._stopping.is_set() or not self._reserve.has_room_for(len(encoded)):
                record.refused_instances += 1
                return OUT_OF_RESOURCES
            target = self.folder("incoming") / series_uid / f"{sop_uid}.dcm"
            try:
                with atomic_path(target) as temporary:
                    temporary.write_bytes(encoded)
            except OSError as exc:  # e.g. the disk is full: nothing of the instance is left behind
                logger.error("C-STORE from %s: cannot write instance %s (%s)", caller, sop_uid, exc)
                with contextlib.suppress(OSError):
                    target.parent.rmdir()  # the series folder, if this instance was to be its first
                record.refused_instances += 1
                return OUT_OF_RESOURCES
            arrival = self._arrivals.setdefault(series_uid, _Arrival(0.0, caller))
            arrival.last_seen = time.monotonic()
            arrival.instances += 1
            record.instances += 1
            record.bytes += len(encoded)
            record.series_uids.add(series_uid)
        return 0x0000

    # ------------------------------------------------------------------ quiet period

    def _watch(self) -> None:
        interval = max(0.05, min(1.0, self.settings.quiet_seconds / 4))
        while not self._stopping.wait(interval):
            now = time.monotonic()
            with self._lock:
                complete = [
                    uid for uid, a in self._arrivals.items() if now - a.last_seen >= self.settings.quiet_seconds
                ]
                for uid in complete:
                    arrival = self._arrivals.pop(uid)
                    job = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}_{uid}"
                    target = self.folder("queue") / job
                    try:
                        (self.folder("incoming") / uid).rename(target)
                    except OSError as exc:
                        logger.error("series %s: cannot queue its folder (%s); left in incoming/", uid, exc)
                        continue
                    self._callers[job] = arrival.calling_ae
                    self._jobs.put(target)
                    logger.info(
                        "series %s complete (%d instance(s) from %s); queued as %s (%d waiting)",
                        uid,
                        arrival.instances,
                        arrival.calling_ae,
                        job,
                        self._jobs.qsize(),
                    )

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        self._send_unsent()
        while not self._stopping.is_set():
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._process(job)
            except Exception:  # e.g. series.csv not writable: logged, and the worker goes on
                logger.exception("series job %s: could not be recorded", job.name)

    def _process(self, job: Path) -> None:
        started = time.monotonic()
        row = {
            "job": job.name,
            "calling_ae": self._callers.pop(job.name, ""),
            "destination": str(self.settings.destination or ""),
        }
        try:
            files = sorted(job.glob("*.dcm"))
            first = pydicom.dcmread(files[0], stop_before_pixels=True) if files else None
            if first is None:
                raise ValueError(f"{job}: no instances")
            row.update(
                study_uid=first.StudyInstanceUID,
                series_uid=first.SeriesInstanceUID,
                modality=getattr(first, "Modality", ""),
                instances=len(files),
            )
            if str(row["modality"]).upper() in NON_IMAGE_MODALITIES:
                row["status"] = "skipped"
                shutil.rmtree(job)
                logger.info("series %s: %s, not an image series; skipped", row["series_uid"], row["modality"])
            else:
                logger.info("series %s: segmenting %d instance(s)", row["series_uid"], len(files))
                result = segment_case(self.segmenter, Case(job.name, job, "dicom"), self.folder("results") / job.name)
                seg = next((p for p in result.outputs if p.name.endswith("_seg.dcm")), None)
                row["seg_file"] = str(seg or "")
                row["status"] = self._deliver(seg) if seg else "no-seg"
                row["error"] = "; ".join(result.warnings)  # e.g. why no SEG was written
                shutil.rmtree(job)  # the outputs are in results/ (and the SEG, if undelivered, in unsent/)
        except Exception as exc:  # the series is kept for a retry; the node goes on with the next
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            kept = self.folder("failed") / job.name
            if job.exists():
                job.rename(kept)
                (kept / "error.txt").write_text(row["error"] + "\n")
            logger.error(
                "series %s failed (%s); its instances are kept in %s",
                row.get("series_uid", job.name),
                row["error"],
                kept,
            )
        row.update(
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            seconds=f"{time.monotonic() - started:.1f}",
        )
        self._record(row)

    def _deliver(self, seg: Path) -> str:
        """C-STORE ``seg`` with retries; ``"stored"``, or ``"unsent"`` with the SEG kept in ``unsent/``."""
        if self.settings.destination is None:
            return "segmented"
        delay = self.settings.retry_delay
        for attempt in range(1, self.settings.store_retries + 1):
            error = self._send(seg)
            if error is None:
                logger.info("SEG %s stored at %s", seg.name, self.settings.destination)
                self._send_unsent()
                return "stored"
            logger.warning(
                "SEG %s to %s, attempt %d of %d: %s",
                seg.name,
                self.settings.destination,
                attempt,
                self.settings.store_retries,
                error,
            )
            if attempt < self.settings.store_retries and not self._stopping.wait(delay):
                delay *= 2
        shutil.copy2(seg, self.folder("unsent") / seg.name)
        logger.error(
            "SEG %s not delivered to %s; kept in %s for a later attempt",
            seg.name,
            self.settings.destination,
            self.folder("unsent"),
        )
        return "unsent"

    def _send_unsent(self) -> None:
        """Send the SEGs waiting in ``unsent/``; stop at the first failure (the destination is still down)."""
        if self.settings.destination is None:
            return
        for seg in sorted(self.folder("unsent").glob("*.dcm")):
            error = self._send(seg)
            if error is not None:
                logger.warning("waiting SEG %s still not delivered: %s", seg.name, error)
                return
            seg.unlink()
            logger.info("waiting SEG %s stored at %s", seg.name, self.settings.destination)

    def _send(self, path: Path) -> str | None:
        """C-STORE one file to the destination; ``None`` on success, else what went wrong."""
        destination = self.settings.destination
        dataset = pydicom.dcmread(path)
        ae = AE(ae_title=self.settings.ae_title)
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = ae.connection_timeout = self.settings.network_timeout
        tls_args = (self._store_tls, destination.host) if self._store_tls else None
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            return "association rejected, aborted or never connected"
        try:
            status = assoc.send_c_store(dataset)
        except (RuntimeError, ValueError) as exc:  # e.g. the destination accepted no context for a SEG
            return f"{type(exc).__name__}: {exc}"
        finally:
            if assoc.is_established:
                assoc.release()
        if not status or "Status" not in status:
            return "no C-STORE response (connection lost or timed out)"
        if status.Status not in STORED_STATUSES:
            return f"C-STORE status 0x{status.Status:04X}"
        return None

    def _record(self, row: dict) -> None:
        path = self.settings.output / SERIES_CSV
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, restval="", extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        logger.info(
            "series %s: %s%s",
            row.get("series_uid", row["job"]),
            row["status"],
            f" ({row['error']})" if row.get("error") else "",
        )
        if self.on_result is not None:
            self.on_result(row)


def serve(bundle: str | os.PathLike, settings: NodeSettings, options: SegmentOptions | None = None) -> DicomNode:
    """Load the bundle with ``options`` (see :func:`common.segment.segmenter.load_bundle`) and start a
    :class:`DicomNode`; returns it."""
    segmenter = load_bundle(bundle, options)
    node = DicomNode(segmenter, settings)
    node.start()
    return node


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "A DICOM node: receive series (C-STORE), segment them, send the DICOM SEG on."
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (configs/inference.json, models/)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on (e.g. 11112)")
    parser.add_argument("--ae-title", default="GDLA", help="this node's AE title (default GDLA)")
    parser.add_argument(
        "--host",
        help=f"address to listen on (default: {LOOPBACK_HOST} without --allow, all interfaces with it); "
        "beyond loopback only with --allow",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="AET@HOST",
        help="a registered sender (repeatable): AE title or *, @, IP address, CIDR network or * "
        "(e.g. PACS@10.1.2.3, CT1@10.1.2.0/24); without any, loopback peers only",
    )
    parser.add_argument("--allow-file", type=Path, help="registered senders, one AET@HOST a line (# comments)")
    parser.add_argument(
        "--reserve-gb",
        type=float,
        default=DEFAULT_RESERVE_GB,
        help="refuse associations (transient) and C-STOREs (0xA700) while the free space under --output is below "
        f"this many GB (default {DEFAULT_RESERVE_GB:g}; 0 turns it off)",
    )
    parser.add_argument("--tls-cert", type=Path, help="this node's certificate (PEM): turns on DICOM TLS")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM, unencrypted)")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate(s) (PEM) that must have signed peers' certificates")
    parser.add_argument(
        "--store-tls", action="store_true", help="C-STORE to --store-to over TLS too (its certificate checked)"
    )
    parser.add_argument(
        "--store-to",
        type=parse_destination,
        metavar="AET@HOST:PORT",
        help="where each DICOM SEG is sent (C-STORE); without it the SEGs stay on disk",
    )
    parser.add_argument("--output", type=Path, default=Path("gdla-node"), help="working folder (default gdla-node)")
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=10.0,
        help="a series is complete when no instance arrived for this long (default 10)",
    )
    parser.add_argument("--store-retries", type=int, default=3, help="C-STORE attempts per SEG (default 3)")
    parser.add_argument(
        "--retry-delay",
        type=float,
        default=5.0,
        help="seconds before the second attempt, doubling after each (default 5)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="queue the series in OUTPUT/failed again")
    parser.add_argument("--weights", type=Path, help="state dict to use instead of BUNDLE/models/model.pt")
    parser.add_argument("--device", help="where the network runs (default: cuda if available, else cpu)")
    parser.add_argument(
        "--batch-size", type=int, help="slices in flight at once, which bounds memory (default: the bundle's)"
    )
    parser.add_argument("--precision", choices=get_args(Precision), help="network arithmetic (see segment --help)")


def configure_logging(output: Path) -> None:
    """Log to stderr and to ``output/node.log`` (timestamps, levels)."""
    output.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(output / LOG_FILE)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def settings_from_arguments(args: argparse.Namespace) -> NodeSettings:
    """The node's settings from the command line, checked (:func:`check_settings`); raises on unusable input."""
    allow = [parse_sender(entry) for entry in args.allow]
    if args.allow_file is not None:
        allow += read_allow_file(args.allow_file)
    tls_options = {"--tls-cert": args.tls_cert, "--tls-key": args.tls_key, "--tls-ca": args.tls_ca}
    missing = [option for option, value in tls_options.items() if value is None]
    if len(missing) not in (0, len(tls_options)):
        raise NodeSetupError(
            f"DICOM TLS needs --tls-cert, --tls-key and --tls-ca together; missing {', '.join(missing)}"
        )
    settings = NodeSettings(
        output=args.output,
        port=args.port,
        ae_title=args.ae_title,
        host=args.host or (ALL_INTERFACES if allow else LOOPBACK_HOST),
        destination=args.store_to,
        allow=tuple(allow),
        reserve_gb=args.reserve_gb,
        tls=None if missing else TlsFiles(args.tls_cert, args.tls_key, args.tls_ca),
        store_tls=args.store_tls,
        quiet_seconds=args.quiet_seconds,
        store_retries=max(1, args.store_retries),
        retry_delay=args.retry_delay,
        retry_failed=args.retry_failed,
    )
    check_settings(settings)
    return settings


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_arguments(args)
    except (SenderEntryError, NodeSetupError, TlsSetupError) as exc:  # nothing is started or written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.output)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop.set())
    try:
        node = serve(
            args.bundle,
            settings,
            SegmentOptions(
                weights=args.weights, device=args.device, batch_size=args.batch_size, precision=args.precision
            ),
        )
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port} ({exc})", file=sys.stderr)
        return 2
    stop.wait()
    logger.info("signal received: finishing the series in work, then stopping")
    node.stop()
    return 0
