"""The authors' published checkpoints -> our state dicts.

The authors' PVT decoder checkpoints use our decoder names (``up1.up``, ``de1.attn.qkvg``, ``head1``) and
the original PVT v2 release names under ``backbone.`` (``backbone.patch_embed1``, ``backbone.block1.0``),
which map onto timm's PVT-v2 names. Loading is strict: every tensor of the model must be filled and
every tensor of the checkpoint placed, with matching shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from .encoders import read_state_dict, remap_pvt_v2_keys

ENCODER_PREFIX = "backbone."
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip_wrappers(key: str) -> str:
    """Drop DataParallel / torch.compile prefixes."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def convert_reference_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an authors' checkpoint to our module names (encoder keys through the PVT v2 -> timm map)."""
    state = {_strip_wrappers(k): v for k, v in state.items()}
    encoder = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    converted = {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIX)}
    converted.update({ENCODER_PREFIX + k: v for k, v in remap_pvt_v2_keys(encoder).items()})
    return converted


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit a model; the message lists every missing, unexpected and mis-shaped key."""


def describe_mismatch(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable lines for each key missing from ``state``, unexpected in it, or of the wrong shape."""
    lines = [f"missing:    {k} {tuple(v.shape)}" for k, v in model_state.items() if k not in state]
    lines += [f"unexpected: {k} {tuple(v.shape)}" for k, v in state.items() if k not in model_state]
    lines += [
        f"shape:      {k} checkpoint {tuple(v.shape)} vs model {tuple(model_state[k].shape)}"
        for k, v in state.items()
        if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)
    ]
    return lines


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """``state`` as it is when its keys are the model's, else renamed from the authors' names when that fits."""
    own = model.state_dict()
    if set(state) == set(own):
        return state
    converted = convert_reference_state_dict(state)
    return converted if not describe_mismatch(own, converted) else state


def load_reference_checkpoint(model: nn.Module, path_or_state_dict: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Load an authors' checkpoint (file or state dict) into ``model`` strictly.

    A file may be a bare state dict or the authors' ``.ckpt``: ``{"model_state_dict": ...}``, training files also
    holding the optimizer and scheduler states, ``epoch`` and ``best_dice`` (a numpy scalar). It is read with
    ``weights_only=True``; a file holding any other Python object is refused.

    Raises :class:`CheckpointMismatchError` listing every missing, unexpected or mis-shaped key.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, state = "state dict", path_or_state_dict
    else:
        source, state = str(path_or_state_dict), read_state_dict(path_or_state_dict)
    converted = convert_reference_state_dict(state)
    problems = describe_mismatch(model.state_dict(), converted)
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise CheckpointMismatchError(
            f"{source} does not fit {type(model).__name__}: {len(problems)} problem(s)\n  {shown}{more}"
        )
    model.load_state_dict(converted, strict=True)
