"""The authors' published checkpoint layouts (tests/data/reference_checkpoints/*.keys.tsv) as state dicts."""

from __future__ import annotations

from pathlib import Path

import torch

KEY_FILES = Path(__file__).parent / "data" / "reference_checkpoints"

#: network name -> the authors' Synapse checkpoint layout (in_chs 1, K 9, deep supervision)
REFERENCE_LAYOUTS = {
    "pvt_gdla": "pvt_gdla_synapse.keys.tsv",
    "pvt_linearattn": "pvt_la_synapse.keys.tsv",
    "pvt_selfattn": "pvt_sa_synapse.keys.tsv",
    "pvt_diffattn": "pvt_da_synapse.keys.tsv",
}


def read_layout(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) pairs in file order; an empty shape is a scalar."""
    rows = []
    for line in (KEY_FILES / REFERENCE_LAYOUTS[name]).read_text().splitlines():
        key, _, shape = line.partition("\t")
        rows.append((key, tuple(int(d) for d in shape.split(",") if d)))
    return rows


def random_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with exactly the reference names and shapes, filled with seeded random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in read_layout(name):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state
