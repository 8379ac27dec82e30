"""Keep freed host memory for reuse: glibc ``malloc`` tuning for CPU inference.

A CPU forward pass of PVT-GDLA at batch 4 allocates and frees activations of up to about 25 MiB many times per
batch. With glibc's defaults, blocks that large are either mapped afresh for every allocation (above the mmap
threshold) or returned to the kernel when freed (the heap top beyond the trim threshold), so every pass faults in
and zeroes its activation pages again: on a two-core AVX2 EPYC about a quarter of a float32 forward pass was kernel
time, and :func:`reuse_freed_host_memory` cut the CPU time per slice by about 12 % (docs/benchmarks.md,
"Where the time goes"). Results are unchanged; the cost is that the process keeps up to ``trim_threshold`` of freed
memory per malloc arena instead of handing it back at once.

It also caps malloc at one arena. glibc otherwise gives the engine's worker threads arenas of their own, made of
64 MiB heaps that each fit only two of those 25 MiB blocks, and keeps every lane's freed memory apart: one shared
arena lowered the peak of two lanes by 60-160 MiB at the same speed (docs/benchmarks.md, "Volume memory"). The
cap binds threads that allocate for the first time after the call, so call it before torch starts its threads
(:func:`common.segment.segmenter.load_bundle` does, before it builds the network).

Elsewhere than glibc (macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: ``mallopt`` parameters (glibc ``malloc.h``)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

#: glibc's ceiling for the mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
DEFAULT_TRIM_THRESHOLD = 1024 * 1024 * 1024


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


@functools.cache
def reuse_freed_host_memory(
    mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = DEFAULT_TRIM_THRESHOLD
) -> bool:
    """Serve allocations up to ``mmap_threshold`` bytes from malloc's heap, keep up to ``trim_threshold`` bytes
    of freed heap per arena and create no further arenas; process-wide, once per argument pair. Returns whether
    glibc accepted the two thresholds."""
    libc = _glibc()
    if libc is None:
        return False
    share_one_arena()
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


def share_one_arena() -> bool:
    """Let threads that first allocate from now on share malloc's main arena instead of making their own
    (``M_ARENA_MAX`` 1, what ``MALLOC_ARENA_MAX=1`` sets at start-up); process-wide. Returns whether glibc took it."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_ARENA_MAX, 1))


def release_freed_host_memory() -> bool:
    """Hand the freed memory malloc keeps back to the kernel now (``malloc_trim``): for when inference is over
    and what follows (writing a volume's outputs) would otherwise allocate on top of the activations kept for
    reuse. Returns whether any was released (``False`` elsewhere than glibc)."""
    libc = _glibc()
    return libc is not None and hasattr(libc, "malloc_trim") and bool(libc.malloc_trim(0))
