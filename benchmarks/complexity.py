"""Params and FLOPs of each network the paper's way (ptflops 0.7.4 MACs) beside the published numbers,
plus true FLOPs that include the attention products (torch.utils.flop_counter), and the saving of key-value
attention over query-key-value attention.

    python benchmarks/complexity.py
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from common.data.input_size import INPUT_SIZE
from common.networks import create_network
from common.networks.complexity import count_parameters, paper_macs, true_flops, truncate
from common.networks.encoders import RandomEncoderWarning
from common.networks.papers import EMCAD_COMPLEXITY, GDLA_TABLE_COMPLEXITY, MLLA_UNET_COMPLEXITY


@dataclass(frozen=True)
class Row:
    """One network counted at one input: ``input_size = (C, H, W)``, ``num_classes`` outputs."""

    name: str
    published: tuple[float, float] | None = None  # Params (M), FLOPs (G) as published
    input_size: tuple[int, int, int] = (1, *INPUT_SIZE)
    num_classes: int = 9
    kwargs: dict = field(default_factory=dict)


#: The GDLA paper's protocol: 1 x 224 x 224, 9 classes, deep supervision on.
ROWS = [
    *(Row(name, published) for name, published in GDLA_TABLE_COMPLEXITY.items()),
    # the GDLA paper copied EMCAD's own figures, counted with thop at 3 x 256 x 256 and one class
    Row("pvt_emcad", EMCAD_COMPLEXITY, input_size=(3, 256, 256), num_classes=1),
    Row("pvt_emcad"),
    Row("pvt_emcad_xattnres"),
    Row("pvt_gdla_xattnres"),
    Row("mlla_unet", MLLA_UNET_COMPLEXITY),  # MLLA-T as the spec gives it
]
KV_NETWORKS = ("setr", "transunet", "cvt")


def measure(row: Row) -> tuple[float, float, float]:
    """Params (M), paper-way GMACs, true GMACs."""
    model = create_network(row.name, in_channels=row.input_size[0], num_classes=row.num_classes, **row.kwargs)
    return (
        count_parameters(model) / 1e6,
        paper_macs(model, row.input_size) / 1e9,
        true_flops(model, row.input_size) / 2e9,
    )


def main() -> None:
    warnings.simplefilter("ignore", RandomEncoderWarning)
    print("'FLOPs' = ptflops 0.7.4 MACs, all output heads (the papers' convention); 'true' counts every matmul,")
    print("convolution and attention product (torch.utils.flop_counter), in GMACs. Published values truncated.")
    header = f"{'network':<20}{'input':>14}{'K':>3}{'Params M':>10}{'published':>10}{'FLOPs G':>9}{'published':>10}{'true G':>8}"
    print(header)
    print("-" * len(header))
    for row in ROWS:
        params, macs, true = measure(row)
        pub_p, pub_f = (f"{v:.2f}" for v in row.published) if row.published else ("-", "-")
        size = "x".join(map(str, row.input_size))
        print(
            f"{row.name:<20}{size:>14}{row.num_classes:>3}{truncate(params):>10.2f}{pub_p:>10}"
            f"{truncate(macs):>9.2f}{pub_f:>10}{true:>8.2f}",
            flush=True,
        )

    print("\nkey-value attention vs query-key-value attention, 1 x 224 x 224, 3 classes (UW-Madison)")
    header = f"{'network':<11}{'attention':>10}{'Params M':>10}{'saving':>8}{'FLOPs G':>9}{'saving':>8}{'true G':>8}{'saving':>8}"
    print(header)
    print("-" * len(header))
    for name in KV_NETWORKS:
        base = None
        for attention in ("qkv", "kv", "kv_pos"):
            params, macs, true = measure(Row(name, num_classes=3, kwargs={"attention": attention}))
            base = base or (params, macs, true)
            savings = [f"{100 * (1 - v / b):.1f}%" for v, b in zip((params, macs, true), base)]
            print(
                f"{name:<11}{attention:>10}{params:>10.2f}{savings[0]:>8}{macs:>9.2f}{savings[1]:>8}"
                f"{true:>8.2f}{savings[2]:>8}",
                flush=True,
            )


if __name__ == "__main__":
    main()
