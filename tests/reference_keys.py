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


def write_authors_checkpoint(path: Path, state: dict[str, torch.Tensor], training: bool = False) -> Path:
    """A ``.ckpt`` in the authors' exact format: ``torch.save({"model_state_dict": ...})``; a training file also
    holds the optimizer and timm scheduler states, ``epoch`` and ``best_dice`` (a numpy float32, as their
    ``np.mean`` over the per-class meter gives)."""
    import numpy as np
    from timm.scheduler import CosineLRScheduler

    document: dict = {"model_state_dict": state}
    if training:
        parameters = [torch.nn.Parameter(v.clone().float()) for v in list(state.values())[:3]]
        optimizer = torch.optim.AdamW(parameters, lr=5e-4, weight_decay=0.01)
        sum(p.sum() for p in parameters).backward()
        optimizer.step()
        scheduler = CosineLRScheduler(
            optimizer, t_initial=100, lr_min=5e-6, warmup_t=2, warmup_lr_init=1e-7, warmup_prefix=False
        )
        document.update(
            optimizer_state_dict=optimizer.state_dict(),
            lr_scheduler_state_dict=scheduler.state_dict(),
            epoch=57,
            best_dice=np.float32(0.8532),
        )
    torch.save(document, path)
    return path
