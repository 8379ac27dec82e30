"""Throughput of ``segment`` against ``segment-archive`` (``--engine local`` and ``--engine ray``) on one archive.

The script writes ``--cases`` CT phantoms (``volume_memory.write_ct``: int16, ``--size`` square, ``--slices`` each,
NIfTI) and segments them with a PVT-GDLA Synapse bundle (seeded random weights: the masks do not matter here),
each command in a fresh process into a cold output folder, at equal total threads (``--threads``):

- ``segment``: one process, torch's threads = ``--threads``;
- ``segment-archive --engine local --cpus-per-worker T``: the same, through the archive's worker and manifest;
- ``segment-archive --engine ray --workers k --cpus-per-worker T/k`` for each ``k`` in ``--workers`` (a private
  Ray on 127.0.0.1 started by the command, included in its start-up).

Per command: start-up seconds (launch to the start of the first case: imports, Ray, workers loading the bundle),
then cases/hour over the cases (first case's start to last case's end), and the median and p95 seconds of one
case (reading to publishing). ``segment``'s cases are timed by the lines it prints when it starts each case (the last one ends when its
final table is printed);
the archive's by its manifest (``seconds``, measured in the worker) and its per-case progress lines. 'x segment'
is the cases/hour over ``segment``'s.

``--gpu`` runs every command on one GPU (Ray's ``k`` workers with a ``1/k`` share each: the overlap of reading
and writing with the GPU). ``--rss-slices N`` also measures the peak resident memory of one worker on an N-slice case (512 x 512): the
``--engine local`` process (the worker code in the driver: ``getrusage`` of the child, as volume_memory.py does)
and, with Ray, the worker actor's own process (its ``VmHWM``, read from /proc while it lives).

Usage: ``python benchmarks/archive_throughput.py --cases 24 --slices 24 --workers 1 2 --rss-slices 600``; on a GPU
``--gpu --threads 8 --workers 1 2 4 --slices 100 --size 512``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from volume_memory import cpu_description, make_bundle, run_measured, write_ct  # noqa: E402 (after sys.path)

STARTED_CASE = re.compile(r"^\[(\d+)/(\d+)\] ")  # segment: printed as a case starts; the archive: as one ends


def timed_lines(command: list[str], env: dict[str, str]) -> tuple[float, list[tuple[float, str]], float, int]:
    """Run ``command``; (launch time, its output lines (stdout and stderr) with arrival times, end time, exit code)."""
    launched = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True, env=env)
    lines = [(time.monotonic(), line.rstrip()) for line in process.stdout]
    code = process.wait()
    return launched, lines, time.monotonic(), code


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure_segment(bundle: Path, cases: Path, output: Path, threads: int, device: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "common", "segment", "--bundle", str(bundle), "--input", str(cases)]
    launched, lines, ended, code = timed_lines([*command, "--output", str(output), "--device", device], env)
    if code != 0:
        raise RuntimeError("segment failed:\n" + "\n".join(line for _, line in lines[-30:]))
    starts = [at for at, line in lines if STARTED_CASE.match(line)]
    report = next(at for at, line in lines if at >= starts[-1] and line.startswith("case "))  # the final table
    seconds = [b - a for a, b in zip(starts, [*starts[1:], report])]
    return summary(launched, starts[0], report, seconds)


def measure_archive(bundle: Path, cases: Path, output: Path, engine: list[str], rss: list[int] | None = None) -> dict:
    command = [sys.executable, "-m", "common", "segment-archive", "--bundle", str(bundle), "--input", str(cases)]
    watcher = ActorMemory() if rss is not None else None
    launched, lines, ended, code = timed_lines([*command, "--output", str(output), *engine], dict(os.environ))
    if watcher:
        rss.append(watcher.stop())
    if code != 0:
        raise RuntimeError("segment-archive failed:\n" + "\n".join(line for _, line in lines[-30:]))
    rows = [json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines()]
    finishes = [at for at, line in lines if STARTED_CASE.match(line)]
    first_start = finishes[0] - float(rows[0]["seconds"])
    return summary(launched, first_start, finishes[-1], [float(row["seconds"]) for row in rows])


def summary(launched: float, first_start: float, last_end: float, seconds: list[float]) -> dict:
    return {
        "startup_s": first_start - launched,
        "cases_per_hour": len(seconds) / (last_end - first_start) * 3600,
        "p50_s": statistics.median(seconds),
        "p95_s": percentile(seconds, 0.95),
        "cases": len(seconds),
    }


class ActorMemory:
    """Polls /proc for Ray worker actors (process title ``ray::_Actor``); the largest peak RSS (MiB) seen."""

    def __init__(self, interval_s: float = 0.2):
        self.peak_kib, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval_s,), daemon=True)
        self._thread.start()

    def _poll(self, interval_s: float) -> None:
        while not self._stop.is_set():
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    text = status.read_text()
                    cmdline = (status.parent / "cmdline").read_bytes()
                except OSError:
                    continue
                if cmdline.startswith(b"ray::_Actor"):
                    peak = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
                    self.peak_kib = max(self.peak_kib, int(peak[1]) if peak else 0)
            time.sleep(interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24, help="cases in the archive (default 24)")
    parser.add_argument("--slices", type=int, default=24, help="slices per case (default 24)")
    parser.add_argument("--size", type=int, default=256, help="slice width and height (default 256)")
    parser.add_argument("--threads", type=int, default=2, help="total threads of every command (default 2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="Ray worker counts (default 2)")
    parser.add_argument("--rss-slices", type=int, help="also measure one worker's peak RSS on a case this long")
    parser.add_argument("--gpu", action="store_true", help="on one GPU: Ray's k workers share it (1/k each)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_description()}; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.1f}; {args.cases} cases of {args.size} x {args.size} x {args.slices} "
        f"(NIfTI), {args.threads} threads per command"
    )
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        bundle = make_bundle(folder)
        cases = folder / "archive"
        cases.mkdir()
        for k in range(args.cases):
            write_ct(cases / f"case_{k:03d}.nii", args.slices, args.size)
        device = "cuda" if args.gpu else "cpu"
        runs = {"segment": measure_segment(bundle, cases, folder / "out_segment", args.threads, device)}
        local = ["--engine", "local", "--cpus-per-worker", str(args.threads), "--device", device]
        runs[f"segment-archive --engine local (1 x {args.threads} threads)"] = measure_archive(
            bundle, cases, folder / "out_local", local
        )
        for workers in args.workers:
            threads = max(1, args.threads // workers)
            engine = ["--engine", "ray", "--workers", str(workers), "--cpus-per-worker", str(threads)]
            engine += ["--gpus-per-worker", str(1 / workers)] if args.gpu else []
            name = f"segment-archive --engine ray ({workers} x {threads} threads)"
            runs[name] = measure_archive(bundle, cases, folder / f"out_ray_{workers}", engine)
        base = runs["segment"]["cases_per_hour"]
        print("| command | start-up s | cases/h | x segment | p50 s/case | p95 s/case |")
        print("|---|---|---|---|---|---|")
        for name, run in runs.items():
            print(
                f"| {name} | {run['startup_s']:.1f} | {run['cases_per_hour']:.0f} | "
                f"{run['cases_per_hour'] / base:.2f} | {run['p50_s']:.2f} | {run['p95_s']:.2f} |"
            )
        if args.rss_slices:
            memory(folder, bundle, args)


def memory(folder: Path, bundle: Path, args: argparse.Namespace) -> None:
    """Peak RSS of one worker on one ``--rss-slices`` case: in process (--engine local) and as a Ray actor."""
    big = folder / "big"
    big.mkdir()
    write_ct(big / "ct.nii", args.rss_slices, 512)
    command = [sys.executable, "-m", "common", "segment-archive", "--bundle", str(bundle), "--input", str(big)]
    local = run_measured([*command, "--output", str(folder / "big_local"), "--engine", "local"])
    peaks: list[float] = []
    measure_archive(
        bundle, big, folder / "big_ray", ["--engine", "ray", "--workers", "1", "--cpus-per-worker", "2"], peaks
    )
    print(
        f"peak RSS, one {args.rss_slices}-slice case (512 x 512): --engine local process {local['peak_mib']:.0f} MiB "
        f"({local['seconds']:.0f} s); Ray worker actor {peaks[0]:.0f} MiB"
    )


if __name__ == "__main__":
    main()
