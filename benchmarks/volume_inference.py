"""Seconds per volume for PVT-GDLA slice-wise inference: our engine beside the authors' per-slice loop.

The naive loop does what the authors' test script does for every slice: ``scipy.ndimage.zoom`` (order 3) to
the network size, a float32 forward pass of one slice under ``torch.no_grad``, softmax and argmax, then ``zoom``
(order 0) back. The engine is :func:`common.inference.engine.predict_volume` (the same spline resize as matrix
products on the device, batches of channels-last slices, argmax at network resolution, nearest-neighbour
gather back), once in float32 and once with its default ``precision="auto"`` (bfloat16 autocast on CPUs with
native bfloat16, float16 on CUDA, float32 elsewhere).

Weights: agreement between masks only means something where the network is confident, so by default the network
is first fitted for ``--fit-steps`` steps to the phantom's own labels (body and seven blobs on background; about
a minute on two cores). A random network's logits sit within rounding error of each other on about 1 % of the
pixels, where any change of arithmetic flips labels. ``--fit-steps 0`` measures such a random network.

Timing: one process, each method with its own copy of the same weights, one warm-up batch each; the methods take
turns volume by volume (or chunk by chunk with ``--chunk``; who goes first rotates), so a shared, noisy machine
slows all alike. A turn is one engine call, as one volume is in use: the engine runs a call's first batch alone
and the rest two at a time on a two-core CPU, so small chunks would understate it. Wall, CPU (all threads of the
process) and forward seconds (timed inside a wrapper around the network; "other" is the rest: resizing, argmax,
copies) are summed over the chunks.

Matmul floor: at the start of the run square float32 matrix products (and bfloat16 ones where the CPU has native
bfloat16) are timed on ``--threads`` threads, best of 20; a method's floor is the network's true multiply-accumulates per
slice (every matmul and convolution of the inference forward pass, :func:`common.networks.complexity.true_flops`) times
2 times the slices over that rate (bfloat16 for ``auto`` where it runs bfloat16, else float32; float32 for int8),
and "% floor" is floor seconds over measured seconds: how close the method comes to spending all its time in
matrix products at the machine's matmul speed.

int8 (``--int8``): the engine with an ONNX Runtime session of the network, its linear layers' weights quantized to
int8 (:func:`common.inference.int8.int8_network`, exported for the engine's slices per pass); its Dice against the
float32 engine is in the last column. Opt-in; not a default.

Peak memory: each method predicts ``--memory-slices`` slices once more in a fresh process; the figure is the
growth of the process's peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs`` once the
network and the volume are built) during that run: activations, resize buffers and the output. It counts
torch's and numpy's allocations alike, unlike ``tracemalloc``, which does not see torch's allocator.

Device (``--device cuda``): every method runs its network there (the loop moves each zoomed slice to the device
and its labels back, as the authors' script does on a GPU); the floor uses the device's float32 and float16 matrix
products (``auto`` is float16 autocast on CUDA), and the memory runs add the peak device memory each method
allocated (``torch.cuda.max_memory_allocated``; the host figure stays the resident-set growth). The phantom fit
runs on the device too. ``--int8`` is CPU-only.

Usage: ``python benchmarks/volume_inference.py --slices 100 --size 512 --repeats 3 [--int8] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.ndimage import zoom

from common.evaluation.metrics import dice
from common.inference.engine import predict_volume
from common.inference.int8 import int8_network
from common.inference.lanes import slices_per_pass
from common.inference.options import SliceInferenceOptions
from common.inference.precision import autocast_dtype
from common.networks import create_network
from common.networks.complexity import true_flops

NUM_CLASSES = 9
ROI = 224
ENGINES = {"engine float32": "float32", "engine auto": "auto"}
INT8 = "engine int8"


def method_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The methods of this run: the loop, the two engine precisions and, with ``--int8``, the int8 session."""
    return ("naive", *ENGINES, *((INT8,) if args.int8 else ()))


class TimedNetwork(nn.Module):
    """Wraps a network; ``seconds`` accumulates the wall time during which at least one forward pass runs.

    Forward passes may overlap (the engine runs batches on two threads), so the clock runs from the moment the
    first pass in flight starts to the moment the last one ends.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network, self.seconds = network, 0.0
        self._lock, self._in_flight, self._since = threading.Lock(), 0, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            if self._in_flight == 0:
                self._since = time.perf_counter()
            self._in_flight += 1
        try:
            output = self.network(x)
            if x.is_cuda:  # the pass has run when its time is taken, not when its kernels are queued
                torch.cuda.synchronize(x.device)
            return output
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self.seconds += time.perf_counter() - self._since


def phantom(size: int, slices: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume and its labels, both ``[size, size, slices]``.

    The image (float32 in [0, 1]) is a body ellipse (label 1) holding seven blobs of different brightness
    (labels 2..8, later blobs on top) that grow and shrink along the slices, plus noise. The geometry depends on
    ``seed`` only, so volumes of any ``size`` show the same anatomy.
    """
    rng = np.random.default_rng(seed)
    blobs = rng.uniform([-0.5, -0.4, 0.08, 0.3], [0.5, 0.4, 0.25, 1.0], size=(NUM_CLASSES - 2, 4))
    x, y = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    volume = np.empty((size, size, slices), np.float32)
    labels = np.zeros((size, size, slices), np.uint8)
    for z in range(slices):
        t = z / max(slices - 1, 1)
        body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1
        image = 0.25 * body
        labels[body, z] = 1
        for label, (cx, cy, radius, level) in enumerate(blobs, start=2):
            r = radius * (0.6 + 0.4 * np.sin(np.pi * t + cx))
            inside = (x - cx) ** 2 + (y - cy) ** 2 < r**2
            image = image + level * 0.5 * inside
            labels[inside, z] = label
        volume[..., z] = image + rng.normal(0, 0.02, image.shape)
    return np.clip(volume, 0, 1), labels


def fit_to_phantom(network: nn.Module, steps: int, seed: int) -> None:
    """Train ``network`` (on its device) for ``steps`` AdamW steps (batch 4, deep supervision) on network-sized
    phantom slices.

    The training phantom has the benchmark volume's anatomy (same ``seed``) sampled at the network size, 32 slices.
    """
    if steps == 0:
        return
    volume, labels = phantom(ROI, 32, seed)
    images = torch.from_numpy(np.moveaxis(volume, -1, 0)[:, None].copy())  # [Z, 1, ROI, ROI]
    targets = torch.from_numpy(np.moveaxis(labels, -1, 0).astype(np.int64))  # [Z, ROI, ROI]
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    device = next(network.parameters()).device
    dtype = autocast_dtype("auto", device)
    network.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (4,), generator=generator)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            outputs = network(images[index].to(device))
        loss = sum(F.cross_entropy(out.float(), targets[index].to(device)) for out in outputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()


def naive_loop(network: nn.Module, volume: np.ndarray, device: torch.device) -> np.ndarray:
    """The authors' per-slice protocol: zoom order 3 in, forward on ``device``, softmax + argmax, zoom order 0 out."""
    height, width, num_slices = volume.shape
    prediction = np.zeros_like(volume, dtype=np.uint8)
    for index in range(num_slices):
        image = zoom(volume[:, :, index], (ROI / height, ROI / width), order=3)
        batch = torch.from_numpy(image).unsqueeze(0).unsqueeze(0).float().to(device)
        with torch.no_grad():
            out = torch.argmax(torch.softmax(network(batch), dim=1), dim=1).squeeze(0).cpu().numpy()
        prediction[:, :, index] = zoom(out, (height / ROI, width / ROI), order=0)
    return prediction


def build_methods(
    args: argparse.Namespace, names: tuple[str, ...]
) -> dict[str, tuple[TimedNetwork, Callable[[np.ndarray], np.ndarray]]]:
    """Each method of ``names`` with its own timed copy of one seeded (and fitted) network: ``{name: (timed
    network, run)}``; the int8 method runs an ONNX Runtime session exported from that network."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = args.device
    network = create_network("pvt_gdla", in_channels=1, num_classes=NUM_CLASSES, encoder_weights="random")
    network.to(device)
    fit_to_phantom(network, args.fit_steps, args.seed)
    precisions = {**ENGINES, INT8: "float32"}
    methods = {}
    for name in names:
        if name == "naive":
            naive = TimedNetwork(copy.deepcopy(network)).eval()
            methods[name] = (naive, lambda volume, naive=naive: naive_loop(naive, volume, device))
            continue
        copied = copy.deepcopy(network).eval()
        if name == INT8:
            per_pass = slices_per_pass(SliceInferenceOptions(batch_size=args.batch_size), torch.device("cpu"))
            copied = int8_network(copied, per_pass, (ROI, ROI), in_channels=1)
        timed = TimedNetwork(copied).eval()

        def run(volume: np.ndarray, timed: TimedNetwork = timed, precision: str = precisions[name]) -> np.ndarray:
            return predict_volume(timed, volume[None], batch_size=args.batch_size, precision=precision)[0]

        methods[name] = (timed, run)
    return methods


def time_methods(args: argparse.Namespace, volume: np.ndarray) -> tuple[dict[str, list[dict]], dict[str, np.ndarray]]:
    """Per repeat and method: wall, CPU and forward seconds of one volume; and each method's last mask."""
    names = method_names(args)
    methods = build_methods(args, names)
    for _, run in methods.values():
        run(volume[..., : args.batch_size])
    chunk = -(-(args.chunk or volume.shape[-1]) // args.batch_size) * args.batch_size
    results: dict[str, list[dict]] = {name: [] for name in names}
    masks = {name: np.zeros(volume.shape, np.uint8) for name in names}
    for repeat in range(args.repeats):
        totals = {name: {"wall": 0.0, "cpu": 0.0, "forward": 0.0} for name in names}
        for number, start in enumerate(range(0, volume.shape[-1], chunk)):
            part = slice(start, start + chunk)
            shift = (repeat + number) % len(names)
            for name in names[shift:] + names[:shift]:
                timed, run = methods[name]
                timed.seconds = 0.0
                wall, cpu = time.perf_counter(), time.process_time()
                masks[name][..., part] = run(volume[..., part])
                totals[name]["wall"] += time.perf_counter() - wall
                totals[name]["cpu"] += time.process_time() - cpu
                totals[name]["forward"] += timed.seconds
        for name in names:
            results[name].append(totals[name])
    return results, masks


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_mib(method: str, args: argparse.Namespace) -> tuple[float, float | None]:
    """Peak RSS growth (MiB) while ``method`` predicts ``--memory-slices`` slices, and on CUDA the peak device
    memory allocated meanwhile (MiB, network weights included; else ``None``); meant for a fresh process."""
    volume, _ = phantom(args.size, args.memory_slices, args.seed)
    _, run = build_methods(argparse.Namespace(**{**vars(args), "fit_steps": 0}), (method,))[method]
    device = args.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS
    baseline = _status_kb("VmRSS")
    run(volume)
    host = (_status_kb("VmHWM") - baseline) / 1024
    return host, torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def matmul_gflops(dtype: torch.dtype, threads: int, device: torch.device, repeats: int = 20) -> float:
    """Best GFLOP/s of ``repeats`` square matrix products in ``dtype`` on ``device`` (1024 on a CPU with ``threads``
    torch threads, 8192 on a GPU; the best, not the median: the floor is what the machine can do, and other load
    only ever slows a product down)."""
    torch.set_num_threads(threads)
    size = 1024 if device.type == "cpu" else 8192
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / min(seconds) / 1e9


def matmul_floors(args: argparse.Namespace, names: tuple[str, ...]) -> tuple[dict[str, float], str]:
    """Seconds per volume each method would take at the measured matmul rate, and a line describing the rates."""
    network = create_network("pvt_gdla", in_channels=1, num_classes=NUM_CLASSES, encoder_weights="random")
    flops = true_flops(network, (1, ROI, ROI), all_heads=False) * args.slices
    device = args.device
    auto = autocast_dtype("auto", device)
    rates = {"float32": matmul_gflops(torch.float32, args.threads, device)}
    rate_of = {name: rates["float32"] for name in names}
    if auto is not None:
        rates[str(auto).removeprefix("torch.")] = rate_of["engine auto"] = matmul_gflops(auto, args.threads, device)
    floors = {name: flops / (rate_of[name] * 1e9) for name in names}
    described = ", ".join(f"{dtype} {rate:.1f}" for dtype, rate in rates.items())
    where = f"{args.threads} threads" if device.type == "cpu" else str(device)
    return floors, f"true {flops / args.slices / 2e9:.2f} GMACs per slice; matmul GFLOP/s on {where}: {described}"


def mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the classes (background included) present in either mask; symmetric."""
    scores = [dice(a == k, b == k) for k in np.union1d(np.unique(a), np.unique(b))]
    return float(np.nanmean(scores))


def device_argument(text: str) -> torch.device:
    """``--device``'s value as a :class:`torch.device`, or argparse's usage error naming what was given."""
    try:
        return torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu or cuda:0, got {text!r}") from exc


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100, help="slices in the volume (default 100)")
    parser.add_argument("--size", type=int, default=512, help="slice width and height (default 512)")
    parser.add_argument("--batch-size", type=int, default=4, help="engine slices in flight (default 4, as the bundles)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="timed volumes per method (default 1)")
    parser.add_argument("--chunk", type=int, default=0, help="slices per turn of a method (default 0: the volume)")
    parser.add_argument("--fit-steps", type=int, default=120, help="training steps on the phantom (default 120)")
    parser.add_argument("--memory-slices", type=int, default=8, help="slices of the memory runs (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--int8", action="store_true", help="add the int8 ONNX Runtime engine (opt-in path)")
    parser.add_argument(
        "--device", type=device_argument, default="cpu", help="where the networks run: cpu (default) or cuda[:N]"
    )
    args = parser.parse_args()
    for name in ("slices", "size", "batch_size", "threads", "repeats", "memory_slices"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.int8 and args.device.type != "cpu":
        parser.error("--int8 runs on the CPU only (ONNX Runtime's CPU session)")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    return args


def main() -> None:
    args = parse_args()
    names = method_names(args)
    volume, labels = phantom(args.size, args.slices, args.seed)
    started = time.perf_counter()
    floors, rates = matmul_floors(args, names)
    results, masks = time_methods(args, volume)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, max_tasks_per_child=1) as pool:
        peaks = {name: pool.submit(peak_memory_mib, name, args).result() for name in names}
    precision = autocast_dtype("auto", args.device)
    print(
        f"PVT-GDLA, {args.size} x {args.size} x {args.slices} volume, network input {ROI}, on {args.device}, "
        f"{args.threads} threads, "
        f"engine batch {args.batch_size}, channels-last; 'auto' runs {precision or 'float32'} here; "
        f"weights fitted for {args.fit_steps} steps; medians of {args.repeats} volume(s); "
        f"peak RSS growth over {args.memory_slices} slices; {rates}; {time.perf_counter() - started:.0f} s in all"
    )
    print(
        f"{'method':<16} {'s/volume':>9} {'slices/s':>9} {'speed-up':>9} {'per volume':>12} {'CPU s':>7} "
        f"{'forward s':>10} {'other s':>8} {'% floor':>8} {'peak +MiB':>10} {'device MiB':>11} "
        f"{'Dice vs naive':>14} {'Dice vs truth':>14} {'Dice vs f32':>12}"
    )
    naive_walls = [r["wall"] for r in results["naive"]]
    for name in names:
        walls = [r["wall"] for r in results[name]]
        seconds = statistics.median(walls)
        ratios = [naive / wall for naive, wall in zip(naive_walls, walls)]
        cpu = statistics.median(r["cpu"] for r in results[name])
        forward = statistics.median(r["forward"] for r in results[name])
        speed_up = statistics.median(naive_walls) / seconds
        agreement, accuracy = mean_dice(masks[name], masks["naive"]), mean_dice(masks[name], labels)
        against_float32 = mean_dice(masks[name], masks["engine float32"])
        host_peak, device_peak = peaks[name]
        device_column = "-" if device_peak is None else f"{device_peak:.0f}"
        print(
            f"{name:<16} {seconds:9.2f} {args.slices / seconds:9.2f} {speed_up:8.2f}x "
            f"{min(ratios):5.2f}-{max(ratios):4.2f}x {cpu:7.1f} {forward:10.2f} {seconds - forward:8.2f} "
            f"{100 * floors[name] / seconds:7.1f}% {host_peak:10.0f} {device_column:>11} {agreement:14.4f} "
            f"{accuracy:14.4f} {against_float32:12.4f}"
        )


if __name__ == "__main__":
    main()
