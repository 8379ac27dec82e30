"""Params and FLOPs of each network the paper's way (ptflops 0.7.4 MACs) beside the published numbers,
plus true FLOPs that include the attention products (torch.utils.flop_counter).

    python benchmarks/complexity.py
"""

from __future__ import annotations

import warnings

from common.complexity import count_parameters, paper_macs, true_flops, truncate
from common.networks import create_network
from common.networks.encoders import RandomEncoderWarning

#: (network, constructor arguments, published Params (M), published FLOPs (G))
ROWS = [
    ("pvt_gdla", {}, 32.13, 6.85),
    ("pvt_linearattn", {}, 28.25, 5.38),
    ("pvt_selfattn", {}, 28.25, 5.40),
    ("pvt_diffattn", {}, 28.75, 5.61),
]


def main() -> None:
    warnings.simplefilter("ignore", RandomEncoderWarning)
    print("input (1, 224, 224), 9 classes, deep supervision on; 'paper' = ptflops 0.7.4 MACs, truncated")
    header = f"{'network':<18}{'Params M':>10}{'published':>10}{'FLOPs G':>9}{'published':>10}{'true GMACs':>12}{'true GFLOPs':>13}"
    print(header)
    print("-" * len(header))
    for name, kwargs, published_params, published_flops in ROWS:
        model = create_network(name, in_channels=1, num_classes=9, deep_supervision=True, **kwargs)
        flops = true_flops(model)
        print(
            f"{name:<18}{truncate(count_parameters(model) / 1e6):>10.2f}{published_params:>10.2f}"
            f"{truncate(paper_macs(model) / 1e9):>9.2f}{published_flops:>10.2f}{flops / 2e9:>12.2f}{flops / 1e9:>13.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
