"""Deterministic train / validation / test splits, and split files (JSON) that bundles ship.

A split file lists case identifiers, never paths, so it travels with a bundle::

    {"dataset": "busi", "seed": 42, "splits": {"train": [...], "validation": [...], "test": [...]}}
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

from common.io.atomic import atomic_path

SPLIT_NAMES = ("train", "validation", "test")
#: Where a dataset's default split comes from, as ``data check`` reports it.
AUTHORS_LIST, TRANSUNET_LIST, SEEDED_SPLIT = "the authors' published list", "TransUNet's list", "our seeded split"
DEFAULT_SEED = 42

Splits = dict[str, list[str]]


class SplitFileError(ValueError):
    """A split file is missing, malformed, or does not match the folder; the message says which."""


def fraction_split(ids: Sequence[str], fractions: Sequence[float], seed: int = DEFAULT_SEED) -> Splits:
    """Shuffle the sorted ``ids`` with ``seed`` and cut them into train / validation / test.

    ``fractions`` (train, validation, test) must sum to 1. Train and validation sizes are rounded half
    up; test gets the rest. The same ids and seed always give the same split.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n_train = int(len(order) * fractions[0] + 0.5)
    n_validation = min(int(len(order) * fractions[1] + 0.5), len(order) - n_train)
    return {
        "train": sorted(order[:n_train]),
        "validation": sorted(order[n_train : n_train + n_validation]),
        "test": sorted(order[n_train + n_validation :]),
    }


def write_splits(path: str | os.PathLike, splits: Splits, *, dataset: str, seed: int | None = DEFAULT_SEED) -> Path:
    """Write ``splits`` to ``path`` as JSON, atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    _validate(splits, path)
    document = {"dataset": dataset, "seed": seed, "splits": {name: list(splits[name]) for name in SPLIT_NAMES}}
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(document, indent=1) + "\n")
    return path


def read_splits(path: str | os.PathLike, dataset: str | None = None) -> Splits:
    """Read a split file; checks its structure and, when ``dataset`` is given, that it belongs to it."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SplitFileError(f"{path}: split file not found") from exc
    except (OSError, ValueError) as exc:
        raise SplitFileError(f"{path}: not a readable JSON split file ({exc})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("splits"), dict):
        raise SplitFileError(f'{path}: expected {{"dataset": ..., "splits": {{"train": [...], ...}}}}')
    if dataset is not None and document.get("dataset") != dataset:
        raise SplitFileError(f"{path}: this split file is for dataset '{document.get('dataset')}', not '{dataset}'")
    splits = {name: document["splits"].get(name, []) for name in SPLIT_NAMES}
    _validate(splits, path)
    return splits


def _validate(splits: Splits, path: Path) -> None:
    unknown = set(splits) - set(SPLIT_NAMES)
    if unknown:
        raise SplitFileError(f"{path}: unknown split names {sorted(unknown)}; expected {list(SPLIT_NAMES)}")
    for name, ids in splits.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise SplitFileError(f"{path}: split '{name}' must be a list of case identifiers (strings)")


def published_list(dataset: str, name: str) -> list[str]:
    """A case-ID list the PVT-GDLA authors published (``splits/<dataset>/<name>.txt`` of their repository),
    shipped in ``common/resources/splits``; one ID per line, in the authors' spelling."""
    from importlib.resources import files

    text = (files("common") / "resources" / "splits" / dataset / f"{name}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]
