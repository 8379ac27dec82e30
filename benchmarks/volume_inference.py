"""Seconds per volume for PVT-GDLA slice-wise inference: our engine beside the authors' per-slice loop.

The naive loop does what the authors' test script does for every slice: ``scipy.ndimage.zoom`` (order 3) to
the network size, a forward pass of one slice under ``torch.no_grad``, softmax and argmax, then ``zoom``
(order 0) back. The engine is :func:`common.inference.predict_volume` (the same spline resize as matrix
products on the device, batches of slices, argmax at network resolution, nearest-neighbour gather back).

Timing: one process, the same random weights for both methods, one warm-up batch each; the volume is cut into
chunks of a few slices and the two methods alternate chunk by chunk (who goes first alternates too), so a
shared, noisy machine slows both alike. Wall, CPU (all threads of the process) and forward seconds (timed
inside a wrapper around the network; "other" is the rest) are summed over the chunks of a volume.

Peak memory: each method predicts ``--memory-slices`` slices once more in a fresh process; the figure is the
growth of the process's peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs`` once the
network and the volume are built) during that run: activations, resize buffers and the output. It counts
torch's and numpy's allocations alike, unlike ``tracemalloc``, which does not see torch's allocator.

Usage: ``python benchmarks/volume_inference.py --slices 100 --size 512 --batch-size 4 --threads 2``.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn as nn
from scipy.ndimage import zoom

from common.inference import predict_volume
from common.metrics import dice
from common.networks import create_network

NUM_CLASSES = 9
ROI = 224
METHODS = ("naive", "engine")


class TimedNetwork(nn.Module):
    """Wraps a network and adds the wall time of each forward pass to ``seconds``."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network, self.seconds = network, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.network(x)
        self.seconds += time.perf_counter() - start
        return out


def phantom_volume(size: int, slices: int, seed: int = 0) -> np.ndarray:
    """A CT-like float32 volume ``[size, size, slices]`` in [0, 1]: body ellipse with organ-like blobs and noise."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    volume = np.empty((size, size, slices), np.float32)
    blobs = rng.uniform([-0.5, -0.4, 0.08, 0.3], [0.5, 0.4, 0.25, 1.0], size=(8, 4))
    for z in range(slices):
        t = z / max(slices - 1, 1)
        image = 0.25 * ((x / 0.9) ** 2 + (y / 0.7) ** 2 < 1)
        for cx, cy, radius, level in blobs:
            r = radius * (0.6 + 0.4 * np.sin(np.pi * t + cx))
            image += level * 0.5 * ((x - cx) ** 2 + (y - cy) ** 2 < r**2)
        volume[..., z] = image + rng.normal(0, 0.02, image.shape)
    return np.clip(volume, 0, 1)


def naive_loop(network: nn.Module, volume: np.ndarray) -> np.ndarray:
    """The authors' per-slice protocol: zoom order 3 in, forward, softmax + argmax, zoom order 0 out."""
    height, width, num_slices = volume.shape
    prediction = np.zeros_like(volume, dtype=np.uint8)
    for index in range(num_slices):
        image = zoom(volume[:, :, index], (ROI / height, ROI / width), order=3)
        batch = torch.from_numpy(image).unsqueeze(0).unsqueeze(0).float()
        with torch.no_grad():
            out = torch.argmax(torch.softmax(network(batch), dim=1), dim=1).squeeze(0).numpy()
        prediction[:, :, index] = zoom(out, (height / ROI, width / ROI), order=0)
    return prediction


def build_methods(args: argparse.Namespace) -> dict[str, tuple[TimedNetwork, Callable[[np.ndarray], np.ndarray]]]:
    """Both methods with their own timed copy of one seeded network: ``{name: (timed network, run)}``."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    network = create_network("pvt_gdla", in_channels=1, num_classes=NUM_CLASSES, encoder_weights="random").eval()
    naive = TimedNetwork(network).eval()
    engine = TimedNetwork(copy.deepcopy(network)).eval()

    def run_engine(volume: np.ndarray) -> np.ndarray:
        options = dict(batch_size=args.batch_size, interpolation=args.interpolation, channels_last=args.channels_last)
        return predict_volume(engine, volume[None], **options)[0]

    return {"naive": (naive, lambda volume: naive_loop(naive, volume)), "engine": (engine, run_engine)}


def time_methods(args: argparse.Namespace, volume: np.ndarray) -> tuple[dict[str, list[dict]], dict[str, np.ndarray]]:
    """Per repeat and method: wall, CPU and forward seconds of one volume; and each method's last mask."""
    methods = build_methods(args)
    for _, run in methods.values():
        run(volume[..., : args.batch_size])
    chunk = -(-max(args.batch_size, 4) // args.batch_size) * args.batch_size
    results: dict[str, list[dict]] = {name: [] for name in METHODS}
    masks = {name: np.zeros(volume.shape, np.uint8) for name in METHODS}
    for _ in range(args.repeats):
        totals = {name: {"wall": 0.0, "cpu": 0.0, "forward": 0.0} for name in METHODS}
        for number, start in enumerate(range(0, volume.shape[-1], chunk)):
            part = slice(start, start + chunk)
            for name in METHODS[:: 1 if number % 2 == 0 else -1]:
                timed, run = methods[name]
                timed.seconds = 0.0
                wall, cpu = time.perf_counter(), time.process_time()
                masks[name][..., part] = run(volume[..., part])
                totals[name]["wall"] += time.perf_counter() - wall
                totals[name]["cpu"] += time.process_time() - cpu
                totals[name]["forward"] += timed.seconds
        for name in METHODS:
            results[name].append(totals[name])
    return results, masks


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_mib(method: str, args: argparse.Namespace) -> float:
    """Peak RSS growth (MiB) while ``method`` predicts ``--memory-slices`` slices; meant for a fresh process."""
    volume = phantom_volume(args.size, args.memory_slices, args.seed)
    _, run = build_methods(args)[method]
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS
    baseline = _status_kb("VmRSS")
    run(volume)
    return (_status_kb("VmHWM") - baseline) / 1024


def mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the classes (background included) present in either mask; symmetric."""
    scores = [dice(a == k, b == k) for k in np.union1d(np.unique(a), np.unique(b))]
    return float(np.nanmean(scores))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100, help="slices in the volume (default 100)")
    parser.add_argument("--size", type=int, default=512, help="slice width and height (default 512)")
    parser.add_argument("--batch-size", type=int, default=4, help="engine slices per forward (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="timed volumes per method (default 1)")
    parser.add_argument("--interpolation", choices=("spline", "bicubic", "bilinear"), default="spline",
                        help="engine image resize (default spline, as the authors' zoom order 3)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last network and batches (engine)")
    parser.add_argument("--memory-slices", type=int, default=8, help="slices of the memory runs (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    volume = phantom_volume(args.size, args.slices, args.seed)
    results, masks = time_methods(args, volume)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, max_tasks_per_child=1) as pool:
        peaks = {name: pool.submit(peak_memory_mib, name, args).result() for name in METHODS}
    print(f"PVT-GDLA, {args.size} x {args.size} x {args.slices} volume, network input {ROI}, {args.threads} threads, "
          f"medians of {args.repeats} volume(s); peak RSS growth over {args.memory_slices} slices")
    print(f"{'method':<28} {'s/volume':>9} {'slices/s':>9} {'CPU s':>7} {'forward s':>10} {'other s':>8} "
          f"{'peak RSS +MiB':>14}")
    seconds = {}
    for name in METHODS:
        label = "naive (authors' loop, b=1)" if name == "naive" else (
            f"engine (b={args.batch_size}{', channels-last' if args.channels_last else ''})")
        seconds[name] = statistics.median(r["wall"] for r in results[name])
        cpu = statistics.median(r["cpu"] for r in results[name])
        forward = statistics.median(r["forward"] for r in results[name])
        print(f"{label:<28} {seconds[name]:9.2f} {args.slices / seconds[name]:9.2f} {cpu:7.1f} {forward:10.2f} "
              f"{seconds[name] - forward:8.2f} {peaks[name]:14.0f}")
    agreement = mean_dice(masks["engine"], masks["naive"]), np.mean(masks["engine"] == masks["naive"])
    print(f"speed-up {seconds['naive'] / seconds['engine']:.2f}x; mask agreement: mean Dice {agreement[0]:.4f}, "
          f"voxels equal {agreement[1]:.4f}")


if __name__ == "__main__":
    main()
