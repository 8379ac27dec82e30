"""Forward time and peak memory of one decoder block (C = 64) per token mixer over growing token grids.

Each (mixer, grid) runs in a fresh process so its peak resident memory is its own. Prints a table with the
growth factor per 4x tokens: linear mixers should grow about 4x, softmax attention about 16x.

    python benchmarks/mixer_scaling.py [--sides 28 56 112 224] [--threads 2] [--memory-limit-gb 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from common.networks.blocks import build_ffn
from common.networks.pvt_decoders import DecoderBlock, build_mixer

DIM = 64
HEADS = DIM // 32
#: block type -> (mixer, ffn, GDLA's input conv) as in the published models
BLOCKS = {
    "gdla": ("gdla", "mixffn", True),
    "linear": ("linear", "mlp", False),
    "softmax": ("softmax", "mlp", False),
    "differential": ("differential", "swiglu", False),
}


def attention_map_bytes(block: str, tokens: int) -> int:
    """Bytes of the N x N maps a mixer materialises at once (fused softmax attention keeps none)."""
    if block == "differential":  # q/k heads of 16 and values of 32 channels: the unfused path
        return 2 * HEADS * tokens * tokens * 4
    return 0


def measure(block_name: str, side: int, repeats: int) -> dict:
    """Median forward seconds and peak extra resident memory (MiB) of one block on a side x side grid."""
    mixer, ffn, input_conv = BLOCKS[block_name]
    torch.manual_seed(0)
    block = DecoderBlock(DIM, build_mixer(mixer, DIM, depth=1), build_ffn(ffn, DIM), input_conv).eval()
    x = torch.randn(1, side * side, DIM)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            block(x, (side, side))
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": statistics.median(times[1:]), "peak_mib": (peak - before) / 1024}


def run_isolated(block: str, side: int, repeats: int, threads: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--single",
        block,
        str(side),
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[28, 56, 112, 224])
    parser.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=list(BLOCKS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--memory-limit-gb", type=float, default=8.0, help="skip a mixer whose attention maps would exceed this"
    )
    parser.add_argument("--single", nargs=2, metavar=("BLOCK", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.single:
        print(json.dumps(measure(args.single[0], int(args.single[1]), args.repeats)))
        return

    print(f"one decoder block, C = {DIM}, batch 1, fp32, {args.threads} threads, median of {args.repeats}")
    print(f"{'block':<13}{'grid':>9}{'tokens':>8}{'ms':>11}{'x per 4x':>10}{'peak MiB':>10}{'x per 4x':>10}")
    for block in args.blocks:
        previous = None
        for side in args.sides:
            tokens = side * side
            if attention_map_bytes(block, tokens) > args.memory_limit_gb * 2**30:
                print(
                    f"{block:<13}{f'{side}x{side}':>9}{tokens:>8}   skipped: attention maps need "
                    f"{attention_map_bytes(block, tokens) / 2**30:.0f} GiB"
                )
                previous = None
                continue
            repeats = args.repeats if tokens <= 112 * 112 else max(1, args.repeats // 2)
            result = run_isolated(block, side, repeats, args.threads)
            growth_t = f"{result['seconds'] / previous['seconds']:.1f}" if previous else "-"
            growth_m = (
                f"{result['peak_mib'] / previous['peak_mib']:.1f}" if previous and previous["peak_mib"] > 1 else "-"
            )
            print(
                f"{block:<13}{f'{side}x{side}':>9}{tokens:>8}{result['seconds'] * 1e3:>11.1f}{growth_t:>10}"
                f"{result['peak_mib']:>10.0f}{growth_m:>10}",
                flush=True,
            )
            previous = result


if __name__ == "__main__":
    main()
