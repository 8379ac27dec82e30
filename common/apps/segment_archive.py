"""``python -m common segment-archive``: segment every case of an archive, resumably, on Ray or in this process.

    python -m common segment-archive --bundle B --input ROOT|DICOMWEB_URL --output DIR
        [--engine ray|local] [--address HOST:PORT] [--workers K] [--cpus-per-worker C] [--gpus-per-worker G]
        [--memory-per-worker GB] [--retries R] [--case-timeout S] [--shard K/N] [--rerun failed|all]
        [--query KEY=VALUE ...] [--store-to URL] [--weights FILE] [--batch-size N] [--precision P]

Each case's outputs are ``segment``'s (same files, same masks), in ``DIR``'s copy of the case's folder;
``DIR/manifest.jsonl`` records every finished case and is what a rerun resumes from; ``report.csv`` and
``volumes.csv`` are rewritten at the end over every case. Exit codes as ``segment``: 0, 1 (a case failed), 2 (the
bundle, input, output folder or cluster cannot be used: one line says why, and nothing is written).
See docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import get_args

from common.archive.cases import ArchiveCase, Shard, dicomweb_cases, folder_cases
from common.archive.local_engine import run_local
from common.archive.manifest import (
    Manifest,
    RunFiles,
    RunLock,
    RunRefused,
    bundle_fingerprint,
    check_fingerprint,
    is_done,
    versions,
    write_run_record,
)
from common.archive.resources import ClusterError, Resources, check_reachable
from common.archive.worker import WorkerSettings, remove_dead_stagings
from common.inference.precision import Precision
from common.io.dicomweb import DicomWebError, is_dicomweb_url
from common.io.tables import write_csv
from common.io.validation import InputError
from common.pacs.dicomweb_segment import input_location
from common.segment.bundle_metadata import BundleError
from common.segment.cases import REPORT_FILE, VOLUMES_FILE, CaseResult, format_report, report_row
from common.segment.segmenter import SegmentOptions

DEFAULT_MEMORY_GB = 1.6  # GiB: a Ray worker's peak on a 600-slice CT was 1499 MiB, plus headroom (docs/benchmarks.md)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Segment every case of an archive with a bundle: resumable, on Ray workers or in process."
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (configs/inference.json, models/)")
    parser.add_argument(
        "--input",
        type=input_location,
        required=True,
        help="the archive's root folder (searched recursively), or a DICOMweb root (with --query) or study URL",
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for the outputs, manifest and tables")
    parser.add_argument("--weights", type=Path, help="state dict to use instead of BUNDLE/models/model.pt")
    parser.add_argument("--batch-size", type=int, help="slices in flight at once (default: the bundle's)")
    parser.add_argument("--precision", choices=get_args(Precision), help="network arithmetic (see segment)")
    engine = parser.add_argument_group("engine and resources")
    engine.add_argument("--engine", choices=("ray", "local"), default="ray", help="Ray actors (default) or in process")
    engine.add_argument("--address", help="a Ray cluster to join (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    engine.add_argument("--workers", type=int, help="Ray workers (default: as many as the CPUs/GPUs allow)")
    engine.add_argument("--cpus-per-worker", type=float, help="CPUs (torch threads) per worker (Ray default 1)")
    engine.add_argument("--gpus-per-worker", type=float, default=0, help="GPU share per worker (0.25: four per GPU)")
    engine.add_argument(
        "--memory-per-worker", type=float, default=DEFAULT_MEMORY_GB, help="GiB Ray reserves per worker (default 1.6)"
    )
    engine.add_argument("--device", help="--engine local: where the network runs (default: cuda if available)")
    faults = parser.add_argument_group("faults, resume and shards")
    faults.add_argument("--retries", type=int, default=2, help="attempts after a worker died on a case (default 2)")
    faults.add_argument("--case-timeout", type=float, help="seconds a case may take before its worker is killed")
    faults.add_argument("--shard", type=Shard.parse, help="K/N: only this shard of the cases (a stable split)")
    faults.add_argument(
        "--rerun",
        choices=("failed", "all"),
        help="'failed': only the cases whose last row failed; 'all': every case, also with another bundle "
        "(default: every case not done)",
    )
    pacs = parser.add_argument_group("PACS (DICOMweb)")
    pacs.add_argument("--query", action="append", default=[], metavar="KEY=VALUE", help="QIDO-RS study filter")
    pacs.add_argument("--store-to", metavar="URL", help="DICOMweb root to send each DICOM SEG to, into its study")
    pacs.add_argument("--ca-bundle", type=Path, metavar="PEM", help="CA certificates to verify the server with")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (BundleError, InputError, DicomWebError, RunRefused, ClusterError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    """Check everything that can be checked before writing anything, then segment under the folder's lock."""
    _check_options(args)
    cases = _find_cases(args)
    if args.shard:
        cases = [case for case in cases if args.shard.holds(case.case_id)]
    files = RunFiles(args.output, args.shard.label if args.shard else "")
    fingerprint = bundle_fingerprint(args.bundle, args.weights, args.precision)
    RunLock.check_free(files.lock)
    if args.rerun != "all":
        check_fingerprint(files, fingerprint, args.bundle)
    last = Manifest(files.manifest).last_rows()
    todo = [case for case in cases if _wanted(case, last.get(case.case_id), args, fingerprint)]
    resources, started_ray = None, False
    try:
        if args.engine == "ray" and todo:
            address = args.address or os.environ.get("RAY_ADDRESS")
            if address:
                check_reachable(address)
            else:  # Ray reads this switch when imported: every Ray process of this host on 127.0.0.1
                os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
            try:
                from common.archive import ray_engine  # Ray is imported only for its engine
            except ImportError as exc:
                raise ClusterError(
                    f"--engine ray needs Ray ({exc}): pip install -e '.[archive]', or use --engine local"
                ) from exc
            started_ray = ray_engine.connect(address, *_sizing(args, todo))
            resources = _cluster_resources(args, len(todo))
            ray_engine.check_resources(resources)
        args.output.mkdir(parents=True, exist_ok=True)
        lock = RunLock(files.lock)
        lock.acquire()
        try:
            write_run_record(files, _run_record(args, fingerprint, resources))
            return _segment(args, files, cases, todo, fingerprint, resources)
        finally:
            lock.release()
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _check_options(args: argparse.Namespace) -> None:
    if args.engine == "local" and (args.case_timeout or args.address or args.workers or args.gpus_per_worker):
        raise ValueError(
            "--engine local runs one case at a time in this process: --case-timeout, --address, --workers and "
            "--gpus-per-worker need --engine ray"
        )
    if args.engine == "ray" and args.device:
        raise ValueError("--device is for --engine local; Ray workers use the GPU share Ray assigns them")
    if args.retries < 0 or (args.workers is not None and args.workers < 1):
        raise ValueError(f"--retries {args.retries}, --workers {args.workers}: expected >= 0 and >= 1")
    if (args.cpus_per_worker is not None and args.cpus_per_worker <= 0) or args.gpus_per_worker < 0:
        raise ValueError(
            f"--cpus-per-worker {args.cpus_per_worker}, --gpus-per-worker {args.gpus_per_worker}: expected > 0 and >= 0"
        )
    if args.query and not is_dicomweb_url(args.input):
        raise ValueError(f"--query is for a DICOMweb --input; found the path {args.input}")


def _find_cases(args: argparse.Namespace) -> list[ArchiveCase]:
    if is_dicomweb_url(args.input):
        return dicomweb_cases(args.input, args.query, args.ca_bundle)
    return folder_cases(Path(args.input))


def _wanted(case: ArchiveCase, row: dict | None, args: argparse.Namespace, fingerprint: str) -> bool:
    if args.rerun == "all":
        return True
    if args.rerun == "failed":
        return row is not None and row.get("status") == "failed"
    return not is_done(row, args.output, fingerprint)


def _sizing(args: argparse.Namespace, todo: Sequence[ArchiveCase]) -> tuple[Resources, int]:
    """The embedded Ray's size: the workers asked for (default: one per CPU, or per GPU share) and this host's
    GPUs."""
    import torch

    gpus = torch.cuda.device_count()
    cpus = args.cpus_per_worker or 1
    workers = args.workers or max(1, int((os.cpu_count() or 1) // cpus))
    if args.gpus_per_worker and not args.workers:
        workers = max(1, int(gpus // args.gpus_per_worker))
    return _resources(args, min(workers, len(todo))), gpus


def _cluster_resources(args: argparse.Namespace, todo: int) -> Resources:
    """The workers on the cluster joined: as asked, else as many as its CPUs (or GPU shares) hold."""
    if args.workers:
        return _resources(args, min(args.workers, todo))
    import ray

    total = ray.cluster_resources()
    cpus = args.cpus_per_worker or 1
    fits = total.get("GPU", 0) / args.gpus_per_worker if args.gpus_per_worker else total.get("CPU", 1) / cpus
    return _resources(args, max(1, min(int(fits), todo)))


def _resources(args: argparse.Namespace, workers: int) -> Resources:
    return Resources(workers, args.cpus_per_worker or 1, args.gpus_per_worker, int(args.memory_per_worker * 1024**3))


def _run_record(args: argparse.Namespace, fingerprint: str, resources: Resources | None) -> dict[str, object]:
    return {
        "fingerprint": fingerprint,
        "bundle": str(args.bundle),
        "weights": str(args.weights or args.bundle / "models" / "model.pt"),
        "precision": args.precision,
        "input": str(args.input),
        "shard": args.shard.label if args.shard else None,
        "engine": args.engine,
        "resources": asdict(resources) if resources else {"threads": args.cpus_per_worker, "device": args.device},
        "versions": versions(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _segment(
    args: argparse.Namespace,
    files: RunFiles,
    cases: Sequence[ArchiveCase],
    todo: Sequence[ArchiveCase],
    fingerprint: str,
    resources: Resources | None,
) -> int:
    """Run ``todo`` on the engine, one manifest row per finished case; then the tables over every case."""
    for path in remove_dead_stagings(args.output):
        print(f"removed {path}: left by a worker that is gone", file=sys.stderr)
    manifest = Manifest(files.manifest)
    progress = Progress(len(todo))
    if len(todo) < len(cases):
        print(f"{len(cases) - len(todo)} of {len(cases)} case(s) done already ({files.manifest.name})", file=sys.stderr)

    def finished(case: ArchiveCase, row: dict, attempts: int) -> None:
        row = {**row, "attempts": attempts, "fingerprint": fingerprint, "finished": _now()}
        manifest.append(row)
        progress.finished(row)

    settings = WorkerSettings(
        bundle=str(args.bundle),
        output=str(args.output),
        options=SegmentOptions(
            weights=str(args.weights) if args.weights else None, batch_size=args.batch_size, precision=args.precision
        ),
        threads=max(1, round(args.cpus_per_worker or 1)) if resources or args.cpus_per_worker else None,
        store_to=args.store_to,
        ca_bundle=str(args.ca_bundle) if args.ca_bundle else None,
    )
    try:
        if todo and resources:
            from common.archive import ray_engine

            ray_engine.run_ray(
                todo, settings, resources, finished, attempts=args.retries + 1, case_timeout=args.case_timeout
            )
        elif todo:
            run_local(todo, settings, args.device, finished)
    finally:
        manifest.close()
    last = manifest.last_rows()
    results = [_result(args.output, last[case.case_id]) for case in cases if case.case_id in last]
    write_csv(files.table(REPORT_FILE), [report_row(result) for result in results])
    volume_rows = [row for case in cases for row in last.get(case.case_id, {}).get("volumes", [])]
    if volume_rows:
        write_csv(files.table(VOLUMES_FILE), volume_rows)
    ran = {case.case_id for case in todo}
    print(format_report([result for result in results if result.case in ran]) if ran else "nothing to segment")
    progress.summary()
    print(f"report: {files.table(REPORT_FILE)} (every case); manifest: {files.manifest}")
    failed = [result.case for result in results if result.status != "ok"]
    if failed:
        print(
            f"{len(failed)} of {len(cases)} case(s) not segmented: {', '.join(failed[:10])}"
            + (" ..." if len(failed) > 10 else "")
        )
    return 1 if failed or len(results) < len(cases) else 0


def _result(output: Path, row: dict) -> CaseResult:
    """A manifest row as ``segment``'s :class:`CaseResult` (for report.csv and the printed table)."""
    return CaseResult(
        case=row["case"],
        source=row["source"],
        status=row["status"],
        outputs=[output / path for path in row.get("outputs", [])],
        error=row.get("error", ""),
        warnings=list(row.get("warnings", [])),
    )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Progress:
    """One line per finished case: done/total, the case, its status and attempts, cases/hour and the ETA
    (counted from the start of the first case: worker start-up apart)."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.seconds: list[float] = []

    def finished(self, row: dict) -> None:
        if not self.done:  # the clock starts with the first case, so worker start-up is not counted
            self.started = time.monotonic() - float(row.get("seconds", 0))
        self.done += 1
        self.seconds.append(float(row.get("seconds", 0)))
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed * 3600 if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate * 3600 if rate else 0.0
        detail = row["error"] if row["status"] != "ok" else f"{row['seconds']:.1f} s"
        print(
            f"[{self.done}/{self.total}] {row['case']}: {row['status']} ({detail}; attempt {row['attempts']}) "
            f"| {rate:.0f} cases/h | ETA {datetime.timedelta(seconds=round(eta))}",
            file=sys.stderr,
            flush=True,
        )

    def summary(self) -> None:
        if not self.seconds:
            return
        ordered = sorted(self.seconds)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        elapsed = time.monotonic() - self.started
        print(
            f"{self.done} case(s) in {elapsed:.1f} s ({self.done / elapsed * 3600:.0f} cases/h); seconds per case: "
            f"median {statistics.median(ordered):.2f}, p95 {p95:.2f}"
        )
