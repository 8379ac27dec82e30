"""A free-space reserve: whether the file system holding a folder has room beyond a reserve, with each change logged.

The DICOM node refuses new associations while the free space is below the reserve and refuses an instance that
would take it below; its worker goes on meanwhile (which frees space), and it accepts again by itself.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

GB = 1e9


class DiskReserve:
    """The free space of ``folder``'s file system against ``reserve_gb`` (0 turns the reserve off)."""

    def __init__(self, folder: Path, reserve_gb: float, logger: logging.Logger) -> None:
        self.folder = Path(folder)
        self.reserve_bytes = int(reserve_gb * GB)
        self.logger = logger
        self._below = False
        self._lock = threading.Lock()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free

    def is_below(self) -> bool:
        """Whether the free space is below the reserve now; the first check after a change logs it."""
        if self.reserve_bytes <= 0:
            return False
        free = self.free_bytes()
        below = free < self.reserve_bytes
        with self._lock:
            changed, self._below = below != self._below, below
        if changed and below:
            self.logger.warning(
                "free space on %s is %.2f GB, below the reserve of %.2f GB: new associations are refused "
                "(transient) and instances answered 0xA700 until space returns",
                self.folder,
                free / GB,
                self.reserve_bytes / GB,
            )
        elif changed:
            self.logger.info(
                "free space on %s is back to %.2f GB (reserve %.2f GB): accepting again",
                self.folder,
                free / GB,
                self.reserve_bytes / GB,
            )
        return below

    def has_room_for(self, size: int) -> bool:
        """Whether ``size`` more bytes leave the reserve intact (and the free space is not below it already)."""
        return self.reserve_bytes <= 0 or (not self.is_below() and self.free_bytes() - size >= self.reserve_bytes)
