"""Whether an ahead-of-time compiled PVT-GDLA forward pass beats the eager one in an engine lane (AOTInductor).

The network's final output for one lane's batch (``[batch, 1, 224, 224]``, channels-last, random weights) is
exported with ``torch.export``, compiled by Inductor ahead of time with the weights frozen into the graph
(``--max-autotune`` adds Inductor's C++ GEMM templates, benchmarked against ATen's kernels for every product),
packaged to a ``.pt2`` file and loaded back, as a deployment would cache it. Eager and compiled passes then take
turns for ``--rounds`` rounds of ``--repeats`` passes on ``--threads`` threads (one engine lane: one thread,
2 slices). Printed: export, compile and load seconds, the largest logit difference and the share of equal argmax
labels, and per round the two medians and the speed-up. The allocator is tuned as the engine tunes it.

Usage: ``python benchmarks/compiled_forward.py [--threads 1] [--batch-size 2] [--precision float32|bfloat16]
[--max-autotune] [--package PATH]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from common.inference.engine import FinalOutput
from common.inference.host_allocator import reuse_freed_host_memory
from common.networks import create_network

ROI = 224


class CpuAutocast(nn.Module):
    """``network`` under CPU autocast to ``dtype`` (none for float32), float32 output: what is exported."""

    def __init__(self, network: nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.network, self.dtype = network, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype is not None):
            return self.network(x).float()


def compile_package(model: nn.Module, batch: torch.Tensor, path: Path, max_autotune: bool) -> tuple[float, float]:
    """Export ``model`` for ``batch`` and write its AOTInductor package to ``path``; (export, compile) seconds."""
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(model, (batch,))
    exported = time.perf_counter()
    options: dict = {"freezing": True}
    if max_autotune:
        options.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN")
    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=options)
    return exported - start, time.perf_counter() - exported


def median_seconds(run: Callable[[], torch.Tensor], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one engine lane)")
    parser.add_argument("--batch-size", type=int, default=2, help="slices per pass (default 2: one engine lane)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--max-autotune", action="store_true", help="also try Inductor's C++ GEMM templates")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per method and round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of eager then compiled (default 3)")
    parser.add_argument("--package", type=Path, help="keep the .pt2 here (default: a temporary folder)")
    args = parser.parse_args()
    for name in ("threads", "batch_size", "repeats", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def main() -> None:
    args = parse_args()
    reuse_freed_host_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = create_network("pvt_gdla", in_channels=1, num_classes=9, encoder_weights="random").eval()
    network.to(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if args.precision == "bfloat16" else None
    model = CpuAutocast(FinalOutput(network), dtype).eval()
    batch = torch.randn(args.batch_size, 1, ROI, ROI).contiguous(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as scratch:
        path = args.package or Path(scratch) / "pvt_gdla.pt2"
        export_s, compile_s = compile_package(model, batch, path, args.max_autotune)
        start = time.perf_counter()
        compiled = torch._inductor.aoti_load_package(str(path))
        load_s = time.perf_counter() - start
    with torch.inference_mode():
        eager_logits, compiled_logits = model(batch), compiled(batch)
        difference = (eager_logits - compiled_logits).abs().max().item()
        agreement = (eager_logits.argmax(1) == compiled_logits.argmax(1)).float().mean().item()
        kind = "freezing" + (" + max-autotune (C++ GEMM)" if args.max_autotune else "")
        print(
            f"AOTInductor ({kind}), batch {args.batch_size}, {args.threads} thread(s), {args.precision}: "
            f"export {export_s:.1f} s, compile {compile_s:.1f} s, load {load_s:.2f} s; "
            f"max |logit difference| {difference:.2e}, equal labels {100 * agreement:.4f} %"
        )
        print("| round | eager ms | compiled ms | speed-up |\n|---|---|---|---|")
        ratios = []
        for round_index in range(args.rounds):
            eager = median_seconds(lambda: model(batch), args.repeats)
            fast = median_seconds(lambda: compiled(batch), args.repeats)
            ratios.append(eager / fast)
            print(f"| {round_index + 1} | {eager * 1e3:.0f} | {fast * 1e3:.0f} | {eager / fast:.2f}x |")
        print(f"median speed-up {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
