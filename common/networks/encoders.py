"""PVT-v2 encoders (timm) and their ImageNet weights from a local file.

No weights are ever downloaded: ``pretrained=False`` always, and weights come from a path the user gives,
either in the original PVT v2 release format (``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``)
or in timm's (``patch_embed.proj.weight``, ``stages.0.blocks.0.attn.q.weight``).
"""

from __future__ import annotations

import importlib
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.models.pvt_v2 import checkpoint_filter_fn

PVT_V2_VARIANTS = ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5")

#: ``encoder_weights`` value that asks for a random encoder without the warning.
RANDOM_WEIGHTS = "random"


class RandomEncoderWarning(UserWarning):
    """The encoder starts from random weights: training will not reproduce the published numbers."""


def create_pvt_v2(variant: str = "pvt_v2_b2", in_channels: int = 3, drop_path_rate: float = 0.1) -> nn.Module:
    """A timm PVT-v2 without classifier head; its stage widths are ``model.embed_dims``."""
    if variant not in PVT_V2_VARIANTS:
        raise ValueError(f"unknown encoder {variant!r}; expected one of {PVT_V2_VARIANTS}")
    return timm.create_model(
        variant, pretrained=False, num_classes=0, in_chans=in_channels, drop_path_rate=drop_path_rate
    )


def pvt_v2_features(encoder: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The four normed stage outputs of ``encoder`` for ``x [B, 3, H, W]``: ``[B, C_i, H / 2^(i+2), W / 2^(i+2)]``."""
    x = encoder.patch_embed(x)
    features = []
    for stage in encoder.stages:
        x = stage(x)
        features.append(x)
    return features


def remap_pvt_v2_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original PVT v2 release key names -> timm names; timm-format dicts pass unchanged."""
    return checkpoint_filter_fn(state_dict, None)


def _numpy_scalar_globals() -> list:
    """The numpy objects a pickled numpy scalar (e.g. the authors' ``best_dice``, a ``float32``) refers to.

    Only the scalar reconstructor, ``numpy.dtype`` and the plain numeric dtype classes: a file naming any other
    global is still refused. Files written under numpy 1 name the reconstructor ``numpy.core.multiarray.scalar``.
    """
    numpy2 = int(np.__version__.split(".")[0]) >= 2
    scalar = importlib.import_module("numpy._core.multiarray" if numpy2 else "numpy.core.multiarray").scalar
    allowed: list = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    names = ("Float16DType", "Float32DType", "Float64DType", "Int32DType", "Int64DType", "BoolDType")
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    allowed += [getattr(dtypes, name) for name in names if dtypes is not None and hasattr(dtypes, name)]
    return allowed


NUMPY_SCALAR_GLOBALS = _numpy_scalar_globals()

#: Keys under which checkpoints nest the network's tensors (the authors' ``.ckpt``: ``model_state_dict``).
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "network")


def load_checkpoint_file(path: str | Path) -> object:
    """``torch.load`` with ``weights_only=True`` and only the numpy scalar types allowed besides tensors.

    Files in torch's zip format are memory-mapped (``mmap=True``): their tensors are read from the page cache
    when copied into a network, so loading leaves no second copy of the weights in the process's heap.
    Raises ``ValueError`` naming the file and, when the file holds some other Python object, what was found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"it refers to {found[1]}" if found else str(err).splitlines()[-1]
        raise ValueError(
            f"{path}: refused; expected tensors, numbers and numpy scalars only (weights_only=True), but {what}"
        ) from err
    except Exception as err:  # a truncated or non-torch file
        raise ValueError(f"{path}: not a readable PyTorch weights file ({err})") from err


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a tensor dict from ``path`` safely (``weights_only``), unwrapping ``model_state_dict`` / ``state_dict``
    / ``model`` nesting (the authors' ``.ckpt`` files, ours, Lightning's)."""
    obj = load_checkpoint_file(path)
    for key in STATE_DICT_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else ""
        raise ValueError(f"{path}: expected a dict of tensors, found {type(obj).__name__}{keys}")
    return obj


def load_encoder_weights(encoder: nn.Module, weights: str | Path | None) -> None:
    """Fill ``encoder`` from an ImageNet weights file; ``None`` warns that it stays random, ``"random"`` is silent.

    The classifier head in the file is ignored; every encoder tensor must be present with its shape.
    A 3-channel stem is adapted to another input channel count the timm way.
    """
    if weights is None:
        warnings.warn(
            "no encoder weights given: the PVT-v2 encoder is RANDOMLY initialised; pass the ImageNet "
            "weights file (e.g. pvt_v2_b2.pth) to reproduce the published results",
            RandomEncoderWarning,
            stacklevel=3,
        )
        return
    if weights == RANDOM_WEIGHTS:
        return
    state = remap_pvt_v2_keys(read_state_dict(weights))
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    stem = "patch_embed.proj.weight"
    target_stem = encoder.state_dict()[stem]
    if stem in state and state[stem].shape[1] != target_stem.shape[1]:
        state[stem] = timm.models.adapt_input_conv(target_stem.shape[1], state[stem])
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if missing or mismatched:
        raise ValueError(
            f"{weights}: not PVT-v2 weights for this encoder; missing {missing[:8]} ({len(missing)} in all), "
            f"mismatched {mismatched[:8]} ({len(mismatched)} in all)"
        )
    encoder.load_state_dict({k: state[k] for k in own})
