"""CPU lanes: how many slice batches run at once, how many slices each holds, and the host memory they use.

On a CPU with two of torch's threads, two one-thread forward passes keep both cores busier than one two-thread
pass; :func:`batch_map` runs the engine's batches that way. Other devices run one batch at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from .host_allocator import reuse_freed_host_memory
from .options import SliceInferenceOptions


def concurrent_lanes(options: SliceInferenceOptions, device: torch.device) -> int:
    """How many forward passes run at once: ``options.concurrent_batches`` on a CPU (auto: 2 with 2 threads), at
    most ``options.batch_size``; 1 on other devices."""
    if device.type != "cpu":
        return 1
    if options.concurrent_batches is not None:
        lanes = options.concurrent_batches
    else:
        lanes = 2 if torch.get_num_threads() == 2 else 1
    return min(lanes, options.batch_size)


def slices_per_pass(options: SliceInferenceOptions, device: torch.device) -> int:
    """Slices in one forward pass: ``options.batch_size`` shared out among the :func:`concurrent_lanes`, so that
    no more than ``batch_size`` slices are in flight on any device (a remainder is left unused)."""
    return options.batch_size // concurrent_lanes(options, device)


def prepare_host_memory(options: SliceInferenceOptions, device: torch.device) -> bool:
    """On a CPU with ``options.reuse_host_memory``, tune malloc now (:func:`reuse_freed_host_memory`; once per
    process). Best called before the network is built: building it starts torch's threads, which share one malloc
    arena only if they first allocate after the call. Returns whether malloc was tuned."""
    return device.type == "cpu" and options.reuse_host_memory and reuse_freed_host_memory()


@contextlib.contextmanager
def batch_map(lanes: int) -> Iterator[Callable]:
    """``map`` for slice batches: the built-in one for one lane (the calling thread, all of torch's threads);
    else a pool of ``lanes`` threads, torch's intra-op threads shared out among them while it is open."""
    if lanes == 1:
        yield map
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // lanes))  # threads started from now on take this count
    try:
        with ThreadPoolExecutor(lanes, thread_name_prefix="slice-batch") as pool:
            yield pool.map
    finally:
        torch.set_num_threads(threads)
