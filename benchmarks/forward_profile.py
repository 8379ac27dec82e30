"""Where a PVT-GDLA forward pass spends its time in one engine lane: operators (torch.profiler) and modules.

One lane of the CPU engine runs batches of 4 channels-last 224 x 224 slices on one thread; this script runs the
same forward pass ``--repeats`` times after a warm-up and prints the operators by self CPU time and the wall time of
the encoder stages, decoder blocks and their parts (forward hooks, medians), and the share of the self CPU time spent
in matrix products (:data:`PRODUCT_OPERATORS`: linear layers, convolutions of every kind, attention, batched
products): what a forward pass would still take if everything else (norms, activations, copies, element-wise
arithmetic) cost nothing. The allocator is tuned as the engine tunes it
(:func:`common.inference.host_allocator.reuse_freed_host_memory`) unless ``--default-malloc`` is given.

Usage: ``python benchmarks/forward_profile.py [--threads 1] [--batch-size 4] [--precision float32|bfloat16]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from common.inference.host_allocator import reuse_freed_host_memory
from common.networks import create_network

ROI = 224
DECODER_PARTS = ("", ".dwc", ".attn", ".attn.qkvg", ".attn.dwc", ".attn.pwc", ".attn.out_proj", ".mlp")
TIMED_MODULES = (
    "backbone.patch_embed",
    *(f"backbone.stages.{i}" for i in range(4)),
    *(f"{block}{part}" for block in ("de1", "de2", "de3") for part in DECODER_PARTS),
    "up1",
    "up2",
    "up3",
)
#: Operators whose self time is matrix-product work (their multiply-accumulates are the floor's count).
PRODUCT_OPERATORS = (
    "aten::addmm",
    "aten::mm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::mkldnn_convolution",
    "aten::_slow_conv2d_forward",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
)


def product_share(averages) -> float:
    """Fraction of the profile's self CPU time spent in :data:`PRODUCT_OPERATORS`."""
    total = sum(event.self_cpu_time_total for event in averages)
    products = sum(event.self_cpu_time_total for event in averages if event.key in PRODUCT_OPERATORS)
    return products / total


def module_seconds(network: torch.nn.Module, run, repeats: int) -> dict[str, float]:
    """Median wall seconds per forward of each module in :data:`TIMED_MODULES` over ``repeats`` calls of ``run``."""
    seconds, started = defaultdict(list), {}
    modules = dict(network.named_modules())
    handles = []
    for name in TIMED_MODULES:
        handles.append(
            modules[name].register_forward_pre_hook(lambda *_, n=name: started.__setitem__(n, time.perf_counter()))
        )
        handles.append(
            modules[name].register_forward_hook(lambda *_, n=name: seconds[n].append(time.perf_counter() - started[n]))
        )
    try:
        totals = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            totals.append(time.perf_counter() - start)
    finally:
        for handle in handles:
            handle.remove()
    return {"forward": statistics.median(totals), **{name: statistics.median(t) for name, t in seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one engine lane)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc malloc's settings alone")
    parser.add_argument("--rows", type=int, default=15, help="operators to list (default 15)")
    args = parser.parse_args()
    if not args.default_malloc:
        reuse_freed_host_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = create_network("pvt_gdla", in_channels=1, num_classes=9, encoder_weights="random").eval()
    network.to(memory_format=torch.channels_last)
    batch = torch.randn(args.batch_size, 1, ROI, ROI).contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if args.precision == "bfloat16" else None

    def run() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            network(batch)

    with torch.inference_mode():
        run()
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(args.repeats):
                run()
        timed = module_seconds(network, run, args.repeats)
    averages = profiler.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    forward = timed.pop("forward")
    share = product_share(averages)
    print(
        f"matrix products: {100 * share:.1f} % of the self CPU time; with everything else free a forward pass would "
        f"take {share * forward * 1e3:.0f} ms"
    )
    print(
        f"module wall time, batch {args.batch_size}, {args.threads} thread(s), {args.precision}: forward {forward * 1e3:.0f} ms"
    )
    for name, seconds in timed.items():
        print(f"{name:28s} {seconds * 1e3:8.1f} ms {100 * seconds / forward:5.1f} %")


if __name__ == "__main__":
    main()
