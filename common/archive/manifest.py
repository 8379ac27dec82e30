"""A run's records in its output folder: ``manifest.jsonl`` (the commit log), ``run.json`` (what made the outputs)
and a lock, so that two runs never write one folder.

The driver is the manifest's only writer: one JSON row per finished attempt of a case, flushed and fsynced before
the next, so a row is there only when the case's outputs were published. A case is done when its last row is
``ok``, was made by the same bundle (the fingerprint), and every output it lists exists.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO

from common.segment.bundle_metadata import BundleError

MANIFEST_FILE = "manifest.jsonl"
RUN_FILE = "run.json"
LOCK_FILE = ".segment-archive.lock"
VERSIONED_PACKAGES = ("torch", "monai", "ray", "gdla-bundles")


class RunRefused(ValueError):
    """The output folder cannot take this run (locked, or made by another bundle); the message says why."""


@dataclass(frozen=True)
class RunFiles:
    """The record files of a run (a shard's carry its label: ``manifest-2-of-8.jsonl``)."""

    output: Path
    shard_label: str = ""

    def _named(self, name: str) -> Path:
        if not self.shard_label:
            return self.output / name
        stem, dot, suffix = name.partition(".") if not name.startswith(".") else (name, "", "")
        return self.output / (f"{stem}-{self.shard_label}{dot}{suffix}")

    @property
    def manifest(self) -> Path:
        return self._named(MANIFEST_FILE)

    @property
    def run(self) -> Path:
        return self._named(RUN_FILE)

    @property
    def lock(self) -> Path:
        return self._named(LOCK_FILE)

    def table(self, name: str) -> Path:
        """``report.csv`` / ``volumes.csv`` (or the shard's)."""
        return self._named(name)


def bundle_fingerprint(bundle: Path, weights: Path | None, precision: str | None) -> str:
    """A hash of what decides the masks: the bundle's configs, its weights and the arithmetic asked for."""
    files = [bundle / "configs" / "inference.json", bundle / "configs" / "metadata.json"]
    files.append(weights or bundle / "models" / "model.pt")
    digest = hashlib.sha256()
    for path in files:
        if not path.is_file():
            raise BundleError(
                f"{path}: not found; expected a MONAI bundle folder (configs/inference.json, "
                "configs/metadata.json) with its weights (models/model.pt or --weights)"
            )
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(str(precision).encode())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Python and the versions of the packages that make the masks and run the work."""
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def check_fingerprint(files: RunFiles, fingerprint: str, bundle: Path) -> None:
    """Refuse a run whose bundle differs from the one that made the folder's outputs (see ``--rerun all``)."""
    if not files.run.is_file():
        return
    try:
        recorded = json.loads(files.run.read_text())
    except (OSError, ValueError) as exc:
        raise RunRefused(f"{files.run}: not a readable run record ({exc}); expected the JSON written by a run") from exc
    if recorded.get("fingerprint") != fingerprint:
        raise RunRefused(
            f"{files.output}: its outputs were made by bundle {recorded.get('bundle')} (fingerprint "
            f"{str(recorded.get('fingerprint'))[:12]}); this run's bundle {bundle} has fingerprint {fingerprint[:12]}: "
            "use another --output, or --rerun all to redo every case with this bundle"
        )


def write_run_record(files: RunFiles, record: Mapping[str, object]) -> None:
    """``run.json``: the fingerprint, the bundle, versions, engine and resources of the latest run."""
    temporary = files.run.with_name(files.run.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(temporary, files.run)


class RunLock:
    """An exclusive ``flock`` on the folder's lock file, held for the run (released by the kernel if the driver
    dies, so a crash leaves no stale lock). The file names the holder's host and pid for the refusal message."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: IO[str] | None = None

    @staticmethod
    def check_free(path: Path) -> None:
        """Raise :class:`RunRefused` if another run holds ``path``; writes nothing."""
        if not path.is_file():
            return
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunRefused(_locked_message(path, handle.read().strip())) from None
            fcntl.flock(handle, fcntl.LOCK_UN)

    def acquire(self) -> None:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise RunRefused(_locked_message(self.path, holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _locked_message(path: Path, holder: str) -> str:
    return (
        f"{path.parent}: another segment-archive run is writing this folder ({holder or 'holder unknown'}, lock "
        f"{path.name}); expected a folder no run holds: wait for it, or use another --output"
    )


class Manifest:
    """``manifest.jsonl``: read its rows, and append one row per finished case attempt (flushed and fsynced)."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: IO[str] | None = None

    def last_rows(self) -> dict[str, dict]:
        """The last row of each case; a torn last line (the driver killed mid-write) is ignored."""
        rows: dict[str, dict] = {}
        if not self.path.is_file():
            return rows
        with open(self.path) as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and "case" in row:
                    rows[row["case"]] = row
        return rows

    def append(self, row: Mapping[str, object]) -> None:
        if self._handle is None:
            torn = _ends_torn(self.path)  # a driver killed mid-write: end its line, or this row would join it
            self._handle = open(self.path, "a")
            if torn:
                self._handle.write("\n")
        self._handle.write(json.dumps(row, sort_keys=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _ends_torn(path: Path) -> bool:
    """Whether ``path`` exists and its last line has no line end."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def is_done(row: Mapping[str, object] | None, output: Path, fingerprint: str) -> bool:
    """Whether a case's last row makes it done: ok, by this bundle, and every output it lists still there."""
    return (
        row is not None
        and row.get("status") == "ok"
        and row.get("fingerprint") == fingerprint
        and all((output / path).is_file() for path in _outputs(row))
    )


def _outputs(row: Mapping[str, object]) -> Iterable[str]:
    outputs = row.get("outputs") or []
    return [str(path) for path in outputs] if isinstance(outputs, list) else []
