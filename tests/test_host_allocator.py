"""glibc malloc tuning for CPU inference: large blocks come from the heap once :func:`reuse_freed_host_memory` ran."""

from __future__ import annotations

import ctypes

import pytest

from common.host_allocator import _glibc, reuse_freed_host_memory


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
