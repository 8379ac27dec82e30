"""Seconds per volume for PVT-GDLA slice-wise inference: our engine beside the authors' per-slice loop.

The naive loop does what the authors' test script does for every slice: ``scipy.ndimage.zoom`` (order 3) to
the network size, a forward pass of one slice under ``torch.no_grad``, softmax and argmax, then ``zoom``
(order 0) back. The engine is :func:`common.inference.predict_volume` (the same spline resize as matrix
products on the device, batches of slices, argmax at network resolution, nearest-neighbour gather back).

Every measurement runs in a fresh process (interleaved, same seed, hence the same random weights and
volume) after one warm-up batch. Peak memory is the growth of the process's peak resident set size
(``VmHWM``, reset through ``/proc/self/clear_refs`` after setup and warm-up) during one volume, so it counts
torch's and numpy's allocations alike, unlike ``tracemalloc``, which does not see torch's allocator.
Forward seconds are timed inside a wrapper around the network; "other" is the rest of the volume time; CPU
seconds (all threads of the process) are given because the machine may be shared.

Usage: ``python benchmarks/volume_inference.py --slices 100 --size 512 --batch-size 4 --threads 2``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from scipy.ndimage import zoom

from common.inference import predict_volume
from common.metrics import dice
from common.networks import create_network

NUM_CLASSES = 9
ROI = 224


@dataclass
class Measurement:
    """One timed volume: wall, CPU and forward seconds, peak RSS growth in MiB, and the mask ``[X, Y, Z]``."""

    method: str
    seconds: float
    cpu_seconds: float
    forward_seconds: float
    peak_mib: float
    mask: np.ndarray


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


def _peak_rss_reset() -> int:
    """Reset the peak RSS to the current RSS; returns the current RSS in kB."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_kb("VmRSS")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(method: str, args: argparse.Namespace) -> Measurement:
    """Build the network and volume, warm up, then time one volume with ``method`` (runs in a child process)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    network = create_network("pvt_gdla", in_channels=1, num_classes=NUM_CLASSES, encoder_weights="random").eval()
    if args.channels_last and method == "engine":
        network = network.to(memory_format=torch.channels_last)
    timed = TimedNetwork(network).eval()
    volume = phantom_volume(args.size, args.slices, args.seed)

    def run(data: np.ndarray) -> np.ndarray:
        if method == "naive":
            return naive_loop(timed, data)
        return predict_volume(
            timed, data[None], batch_size=args.batch_size, interpolation=args.interpolation,
            channels_last=args.channels_last,
        )[0]

    run(volume[..., : args.batch_size])
    timed.seconds = 0.0
    baseline_kb = _peak_rss_reset()
    start, cpu_start = time.perf_counter(), time.process_time()
    mask = run(volume)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_mib = (_status_kb("VmHWM") - baseline_kb) / 1024
    return Measurement(method, seconds, cpu_seconds, timed.seconds, peak_mib, mask)


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
    parser.add_argument("--repeats", type=int, default=1, help="volumes per method, interleaved (default 1)")
    parser.add_argument("--interpolation", choices=("spline", "bicubic", "bilinear"), default="spline",
                        help="engine image resize (default spline, as the authors' zoom order 3)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last network and batches (engine)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    context = multiprocessing.get_context("spawn")
    results: dict[str, list[Measurement]] = {"naive": [], "engine": []}
    with context.Pool(1, maxtasksperchild=1) as pool:
        for _ in range(args.repeats):
            for method in results:
                results[method].append(pool.apply(measure, (method, args)))
    print(f"PVT-GDLA, {args.size} x {args.size} x {args.slices} volume, network input {ROI}, "
          f"{args.threads} threads, medians of {args.repeats} run(s) in fresh processes")
    print(f"{'method':<26} {'s/volume':>9} {'slices/s':>9} {'CPU s':>7} {'forward s':>10} {'other s':>8} "
          f"{'peak RSS +MiB':>14}")
    for method, runs in results.items():
        label = "naive (authors' loop, b=1)" if method == "naive" else f"engine (b={args.batch_size})"
        seconds = statistics.median(r.seconds for r in runs)
        cpu = statistics.median(r.cpu_seconds for r in runs)
        forward = statistics.median(r.forward_seconds for r in runs)
        peak = statistics.median(r.peak_mib for r in runs)
        print(f"{label:<26} {seconds:9.2f} {args.slices / seconds:9.2f} {cpu:7.1f} {forward:10.2f} "
              f"{seconds - forward:8.2f} {peak:14.0f}")
    naive, engine = results["naive"][-1].mask, results["engine"][-1].mask
    speedup = statistics.median(r.seconds for r in results["naive"]) / statistics.median(
        r.seconds for r in results["engine"])
    print(f"speed-up {speedup:.2f}x; mask agreement: mean Dice {mean_dice(engine, naive):.4f}, "
          f"voxels equal {np.mean(engine == naive):.4f}")


if __name__ == "__main__":
    main()
