"""glibc malloc tuning for CPU inference: large blocks come from the heap once :func:`reuse_freed_host_memory` ran."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
from repo_paths import REPO

from common.inference.host_allocator import _glibc, release_freed_host_memory, reuse_freed_host_memory


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def test_a_large_block_is_served_from_the_heap_not_mapped():
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("not glibc 2.33 or later")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    assert reuse_freed_host_memory()
    size = 24 * 1024 * 1024  # an activation of PVT-GDLA at batch 4, below glibc's 32 MiB ceiling
    mapped_before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    try:
        assert block
        assert libc.mallinfo2().hblkhd - mapped_before < size, "the block was mapped afresh"
    finally:
        libc.free(block)
    heap_free = libc.mallinfo2().fordblks
    assert heap_free >= size, f"the freed block went back to the kernel ({heap_free} bytes free in the heap)"


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux's /proc/self/statm")
def test_kept_memory_goes_back_to_the_kernel_when_released():
    """Once tuned, a freed 24 MiB block stays resident for reuse; release_freed_host_memory hands it back."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    assert reuse_freed_host_memory()
    size = 24 * 1024 * 1024
    block = libc.malloc(size)
    assert block
    ctypes.memset(block, 1, size)  # resident
    libc.free(block)
    kept = resident_bytes()
    assert release_freed_host_memory()
    assert kept - resident_bytes() >= size // 2, "the freed block stayed resident"


ARENA_PROBE = """
import ctypes, os, re, sys, tempfile, threading
from common.inference.host_allocator import _glibc, reuse_freed_host_memory, share_one_arena
if sys.argv[1] == "tuned":
    reuse_freed_host_memory()
elif sys.argv[1] == "one arena":
    share_one_arena()
libc = _glibc()
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fdopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
allocated = threading.Barrier(4)

def allocate():
    block = libc.malloc(1 << 20)
    allocated.wait()  # all three threads hold a block at once, so none can take over another's arena
    libc.free(block)

threads = [threading.Thread(target=allocate) for _ in range(3)]
for thread in threads:
    thread.start()
allocated.wait()
with tempfile.TemporaryFile() as report:
    stream = libc.fdopen(os.dup(report.fileno()), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    report.seek(0)
    print(len(re.findall(rb"<heap nr=", report.read())))
for thread in threads:
    thread.join()
"""


def arenas_after_three_threads_allocate(mode: str) -> int:
    """malloc's arenas in a fresh process once three threads hold a block each (``mode`` ``"tuned"``: after
    :func:`reuse_freed_host_memory`; ``"one arena"``: after :func:`share_one_arena`, as the MONAI Label launcher
    does)."""
    result = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return int(result.stdout.strip())


def test_worker_threads_share_one_arena_once_tuned():
    if _glibc() is None or not hasattr(_glibc(), "malloc_info"):
        pytest.skip("not glibc")
    assert arenas_after_three_threads_allocate("default") > 1, "glibc gave the threads no arenas of their own"
    assert arenas_after_three_threads_allocate("tuned") == 1
    assert arenas_after_three_threads_allocate("one arena") == 1
