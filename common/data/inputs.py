"""Inference inputs given the model zoo's ways: a folder (``dataset_dir``), or a ``datalist`` of paths or dicts."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence


class EmptyDatalistError(ValueError):
    """An inference run with nothing to segment; the message says where it looked."""


def inference_datalist(items: Sequence[str | os.PathLike | Mapping], where: str = "") -> list[dict]:
    """``items`` (paths, or dicts with an ``"image"`` path) -> ``[{"image": path, "source": path, ...}]``.

    ``source`` keeps the input path for writers of 2-D masks (2-D loading drops the file name). Raises
    :class:`EmptyDatalistError` naming ``where`` (the folder pattern searched) when there is nothing to segment.
    """
    if isinstance(items, (str, os.PathLike, Mapping)):
        items = [items]
    entries = []
    for item in items:
        if isinstance(item, Mapping):
            if "image" not in item:
                raise ValueError(f"datalist entry {dict(item)!r}: expected an 'image' key with the input's path")
            entries.append({"source": str(item["image"]), **item})
        else:
            entries.append({"image": str(item), "source": str(item)})
    if not entries:
        raise EmptyDatalistError(
            f"nothing to segment: no input matched {where or 'the datalist'}; pass --dataset_dir FOLDER "
            "(or --datalist \"['a.nii.gz', ...]\")"
        )
    return entries
