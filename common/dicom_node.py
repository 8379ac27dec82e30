"""``python -m common listen``: a DICOM node that segments every image series it receives and sends back the SEG.

    python -m common listen --bundle B --port 11112 --ae-title GDLA --store-to ORTHANC@pacs.example:4242
                            [--output DIR] [--host 0.0.0.0] [--quiet-seconds 10] [--store-retries 3]
                            [--retry-delay 5] [--retry-failed] [--weights FILE] [--device cpu]

A Storage SCP (``pynetdicom``) answering C-ECHO and C-STORE of any storage SOP class. Instances are written as
they arrive to ``DIR/incoming/<SeriesInstanceUID>/``; a series with no new instance for ``--quiet-seconds`` is
complete and moves to ``DIR/queue/<job>/`` (``<job>`` = arrival time and SeriesInstanceUID). One worker segments
the queued series one at a time (associations are always accepted, however long the queue), writes the outputs
to ``DIR/results/<job>/`` and C-STOREs the DICOM SEG to ``--store-to``. Per series, ``DIR/series.csv`` gets a row
(status ``stored``, ``unsent``, ``no-foreground``, ``skipped`` for non-image series such as SEGs, or
``failed``) and ``DIR/node.log`` the details. A series that fails stays in ``DIR/failed/<job>/`` with the error
in ``error.txt`` (``--retry-failed`` queues them again at start). An unreachable destination is retried with
back-off (``--store-retries`` attempts, ``--retry-delay`` doubling); then the SEG waits in ``DIR/unsent/`` and
is sent after the next successful delivery or at the next start. SIGINT/SIGTERM stop accepting associations,
finish the series in work and stop; queued and partly received series are taken up at the next start.
"""

from __future__ import annotations

import argparse
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
import torch.nn as nn
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from common.bundle_segmenter import BundleError, BundleSegmenter, load_bundle
from common.case_segmentation import segment_case
from common.inference import Precision
from common.input_cases import Case
from common.io.atomic import atomic_path
from common.io.dicomweb import NON_IMAGE_MODALITIES

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
    host: str = "0.0.0.0"
    destination: Destination | None = None
    quiet_seconds: float = 10.0
    store_retries: int = 3
    retry_delay: float = 5.0
    retry_failed: bool = False
    network_timeout: float = 30.0


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
    _callers: dict[str, str] = field(default_factory=dict)
    _jobs: queue.Queue = field(default_factory=queue.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _server: object = None
    on_result: Callable[[dict], None] | None = None  # called with each series.csv row (tests, monitoring)

    # ------------------------------------------------------------------ folders

    def folder(self, name: str) -> Path:
        path = self.settings.output / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Take up work left from a previous run, then listen and start the watcher and the worker."""
        for name in ("incoming", "queue", "results", "failed", "unsent"):
            self.folder(name)
        self._resume()
        ae = AE(ae_title=self.settings.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.settings.network_timeout
        ae.maximum_associations = MAX_ASSOCIATIONS
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        self._server = ae.start_server((self.settings.host, self.settings.port), block=False, evt_handlers=handlers)
        for target, name in ((self._watch, "quiet-period watcher"), (self._work, "segmenting worker")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            "listening as %s on %s:%d; destination %s; output %s",
            self.settings.ae_title,
            self.settings.host,
            self.settings.port,
            self.settings.destination or "none",
            self.settings.output,
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

    def _on_echo(self, event: evt.Event) -> int:
        logger.info("C-ECHO from %s (%s)", event.assoc.requestor.ae_title, event.assoc.requestor.address)
        return 0x0000

    def _on_aborted(self, event: evt.Event) -> None:
        logger.warning(
            "association from %s (%s) aborted; instances received so far are kept",
            event.assoc.requestor.ae_title,
            event.assoc.requestor.address,
        )

    def _on_store(self, event: evt.Event) -> int:
        caller = f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
        try:
            dataset = event.dataset
            series_uid, sop_uid = str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID)
            if not pydicom.uid.UID(series_uid).is_valid or not pydicom.uid.UID(sop_uid).is_valid:
                raise ValueError(f"invalid UIDs (series {series_uid!r}, instance {sop_uid!r})")
            encoded = event.encoded_dataset()
        except Exception as exc:  # a malformed instance is refused; the association and the node go on
            logger.error("C-STORE from %s refused: cannot read the instance (%s: %s)", caller, type(exc).__name__, exc)
            return CANNOT_UNDERSTAND
        with self._lock:
            if self._stopping.is_set():
                return OUT_OF_RESOURCES
            try:
                with atomic_path(self.folder("incoming") / series_uid / f"{sop_uid}.dcm") as temporary:
                    temporary.write_bytes(encoded)
            except OSError as exc:
                logger.error("C-STORE from %s: cannot write instance %s (%s)", caller, sop_uid, exc)
                return OUT_OF_RESOURCES
            arrival = self._arrivals.setdefault(series_uid, _Arrival(0.0, caller))
            arrival.last_seen = time.monotonic()
            arrival.instances += 1
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
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
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


def serve(
    bundle: str | os.PathLike,
    settings: NodeSettings,
    *,
    weights: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    precision: Precision | None = None,
    network: nn.Module | None = None,
) -> DicomNode:
    """Load the bundle (see :func:`common.bundle_segmenter.load_bundle`) and start a :class:`DicomNode`; returns it."""
    segmenter = load_bundle(
        bundle, weights=weights, device=device, batch_size=batch_size, precision=precision, network=network
    )
    node = DicomNode(segmenter, settings)
    node.start()
    return node


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "A DICOM node: receive series (C-STORE), segment them, send the DICOM SEG on."
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (configs/inference.json, models/)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on (e.g. 11112)")
    parser.add_argument("--ae-title", default="GDLA", help="this node's AE title (default GDLA)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
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


def run(args: argparse.Namespace) -> int:
    configure_logging(args.output)
    settings = NodeSettings(
        output=args.output,
        port=args.port,
        ae_title=args.ae_title,
        host=args.host,
        destination=args.store_to,
        quiet_seconds=args.quiet_seconds,
        store_retries=max(1, args.store_retries),
        retry_delay=args.retry_delay,
        retry_failed=args.retry_failed,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop.set())
    try:
        node = serve(
            args.bundle,
            settings,
            weights=args.weights,
            device=args.device,
            batch_size=args.batch_size,
            precision=args.precision,
        )
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port} ({exc})", file=sys.stderr)
        return 2
    stop.wait()
    logger.info("signal received: finishing the series in work, then stopping")
    node.stop()
    return 0
