"""A gzip file read as a seekable file of its decompressed bytes, in memory that does not grow with the file.

:class:`IndexedGzipFile` decompresses forward from where the last read stopped and, on the way, keeps an access
point every ``spacing`` decompressed bytes: a copy of the inflater's state (zlib's 32 KiB window and its own
state, about 40 KiB) and the compressed offset it resumes from, the scheme of zlib's ``zran.c`` example. A read
ahead of the current position decompresses on from there, so reads in increasing order decompress the file once.
A read behind it resumes from the nearest access point at or before it and keeps what it decompresses up to the
next access point (at most two spacings) as a block, which serves the reads that fall into it: reads in
decreasing order also decompress the file about twice (once on the way to the end, then each block once), and a
read a little behind the last (two lanes taking slabs in turn) costs at most one block. ``gzip.GzipFile``
restarts from the start of the file for every backward seek, which costs the square of the file's length.
:meth:`IndexedGzipFile.index` decompresses the rest of the file, checking every member's CRC and length.

Memory: at most one access point per ``spacing`` bytes read so far (about 1 % of them at the default 4 MiB), one
block of one or two spacings and the read in hand.
Several members (``cat a.gz b.gz``) and zero padding after the last one are read as :mod:`gzip` reads them.
A truncated or corrupt stream raises :class:`common.io.validation.VolumeReadError` naming the file, when the read
that reaches the damage is made.
"""

from __future__ import annotations

import bisect
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.io.validation import VolumeReadError

CHUNK = 1 << 16  # compressed bytes per file read
SKIP_BLOCK = 1 << 20  # decompressed bytes per call while skipping ahead (not kept)
ACCESS_POINT_SPACING = 4 << 20  # decompressed bytes between access points: the most a read skips
GZIP_WBITS = zlib.MAX_WBITS | 16  # a gzip header and trailer around the deflate stream


@dataclass(frozen=True)
class AccessPoint:
    """Where decompression can resume: ``inflater`` (never used itself, only copied) gives the decompressed bytes
    from ``output`` on when fed the compressed bytes from file offset ``input`` on."""

    output: int
    input: int
    inflater: Any  # zlib's Decompress object


class IndexedGzipFile(io.RawIOBase):
    """The decompressed content of the gzip file ``path``, read-only and seekable; see the module docstring."""

    def __init__(self, path: str | os.PathLike, spacing: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.spacing = spacing or ACCESS_POINT_SPACING
        self._file = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        self._points = [AccessPoint(0, 0, zlib.decompressobj(GZIP_WBITS))]
        self._outputs = [0]  # the points' decompressed offsets, for bisection
        self._size: int | None = None  # decompressed bytes, once the end was reached
        self._position = 0  # where the next read starts (decompressed offset)
        self._block: tuple[int, memoryview] = (0, memoryview(b""))  # (offset, bytes) kept after a jump back
        self._resume(self._points[0])

    # io.RawIOBase

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position}.get(whence)
        base = self.index() if whence == io.SEEK_END else base
        if base is None:
            raise ValueError(f"{self.path}: invalid whence {whence}")
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` decompressed bytes from the current position (all that is left for ``-1``)."""
        if size is None or size < 0:
            size = max(0, self.index() - self._position)
        pieces = list(self._pieces(size))
        return pieces[0] if len(pieces) == 1 and isinstance(pieces[0], bytes) else b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        target, filled = memoryview(buffer).cast("B"), 0
        for piece in self._pieces(len(target)):
            target[filled : filled + len(piece)] = piece
            filled += len(piece)
        return filled

    def close(self) -> None:
        self._file.close()
        super().close()

    # the index

    @property
    def access_points(self) -> int:
        """How many access points are kept (one at the start, then about one per ``spacing`` bytes read)."""
        return len(self._points)

    def index(self) -> int:
        """Decompress the file up to its end from the furthest point reached (the whole file on first use), checking
        every member's CRC and length and leaving access points all along; returns the decompressed size."""
        if self._size is None:
            furthest = self._points[-1]
            if self._output < furthest.output:
                self._resume(furthest)
            while self._inflate(SKIP_BLOCK):
                pass
        return self._size

    # decompression

    def _resume(self, point: AccessPoint) -> None:
        self._inflater = point.inflater.copy()
        self._output, self._input, self._pending = point.output, point.input, b""
        self._file.seek(point.input)  # invariant: the file is at self._input + len(self._pending)

    def _pieces(self, size: int) -> Iterator[bytes | memoryview]:
        """The decompressed bytes from the current position on, ``size`` of them (fewer at the end of the data), in
        pieces; the position moves past each piece as it is given."""
        while size > 0:
            start, block = self._block
            if start <= self._position < start + len(block):
                piece = block[self._position - start : self._position - start + size]
            else:
                self._go_to(self._position)
                if self._block[0] <= self._position < self._block[0] + len(self._block[1]):
                    continue  # a jump back: served from the block just decompressed
                piece = self._inflate(size)
                if not piece:
                    return
            self._position += len(piece)
            size -= len(piece)
            yield piece

    def _go_to(self, offset: int) -> None:
        """Make the next decompressed byte the one at ``offset``: decompress on from the current state when it is
        at or before ``offset`` and not behind the nearest access point; else resume from that access point and
        keep what it gives up to the next one as the block (:meth:`_fill_block`), so that reads going backwards
        decompress each part of the file once, not once per read."""
        k = bisect.bisect_right(self._outputs, offset) - 1
        point = self._points[k]
        if not point.output <= self._output <= offset:
            self._resume(point)
            following = self._outputs[k + 1] if k + 1 < len(self._outputs) else point.output + self.spacing
            self._fill_block(min(following, point.output + 2 * self.spacing))
        while self._output < offset and self._inflate(min(SKIP_BLOCK, offset - self._output)):
            pass

    def _fill_block(self, stop: int) -> None:
        """Decompress up to offset ``stop`` (less at the end of the data) into the block, replacing the one held."""
        start = self._output
        self._block = (0, memoryview(b""))  # the old block is let go before the new one is filled
        block, filled = bytearray(stop - start), 0
        while filled < len(block) and (data := self._inflate(len(block) - filled)):
            block[filled : filled + len(data)] = data
            filled += len(data)
        self._block = (start, memoryview(block)[:filled])

    def _inflate(self, limit: int) -> bytes:
        """The next up to ``limit`` (> 0) decompressed bytes; ``b""`` at the end of the data."""
        while True:
            if self._inflater.eof and not self._next_member():
                return b""
            if not self._pending:
                self._pending = self._file.read(CHUNK)
                if not self._pending:
                    raise VolumeReadError(
                        f"{self.path}: the gzip stream ends after {self._output} bytes, in the middle of a member "
                        "(a truncated file)"
                    )
            try:
                data = self._inflater.decompress(self._pending, limit)
            except zlib.error as exc:
                raise VolumeReadError(
                    f"{self.path}: corrupt gzip data near compressed byte {self._input} ({exc})"
                ) from exc
            consumed = len(self._pending)
            self._pending = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail
            self._input += consumed - len(self._pending)
            if data:
                self._output += len(data)
                self._mark()
                return data

    def _next_member(self) -> bool:
        """After a member's end: start the next member (``True``), or record the end of the data (``False``);
        zero bytes between or after members are skipped, as :mod:`gzip` skips them."""
        while True:
            data = self._pending.lstrip(b"\0")
            self._input += len(self._pending) - len(data)
            self._pending = data
            if data:
                self._inflater = zlib.decompressobj(GZIP_WBITS)
                return True
            self._pending = self._file.read(CHUNK)
            if not self._pending:
                self._size = self._output
                return False

    def _mark(self) -> None:
        """Keep an access point here if the furthest one is a spacing behind and all the read input is consumed
        (a point then holds no compressed bytes, only the inflater's window)."""
        if not self._pending and self._output >= self._points[-1].output + self.spacing:
            self._points.append(AccessPoint(self._output, self._input, self._inflater.copy()))
            self._outputs.append(self._output)
