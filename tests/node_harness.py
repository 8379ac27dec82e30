"""Watching the DICOM node in the tests: its series.csv rows as they come, its log, its disk reserve."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

TEST_RESERVE_GB = 0.001  # the node's disk reserve, on but small: CI disks have less than the default 5 GB free


class Results:
    """The node's series.csv rows as they come, with a wait for the n-th."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.changed = threading.Condition()

    def add(self, row: dict) -> None:
        with self.changed:
            self.rows.append(dict(row))
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 120) -> list[dict]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.rows) >= count, timeout), f"rows so far: {self.rows}"
            return list(self.rows)


def wait_for_text(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s:\n{path.read_text() if path.exists() else ''}")


def csv_rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))
