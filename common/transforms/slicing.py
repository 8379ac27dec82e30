"""Volumes to 2-D slices: :class:`AxialSlicesd` cuts (C, H, W, Z) volume dicts into (C, H, W) slice dicts.

Also the item's keys (:data:`KEYS`) and :func:`plain_tensor`, shared by the augmentation and resize transforms.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

KEYS = ("image", "label")


def plain_tensor(value: object) -> torch.Tensor:
    """``value`` (a MetaTensor, tensor or array) as a plain tensor, without MONAI's metadata."""
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


class AxialSlicesd(Randomizable, MapTransform):
    """Cut a (C, H, W, Z) volume dict into 2-D slice dicts (C, H, W), the slices taken as stored.

    :func:`~common.transforms.pipelines.volume_transforms` orients volumes to
    :data:`~common.io.orientation.DISPLAY_AXCODES`, so the slices are in the display layout, the same the slice-wise
    inferer sees at evaluation and inference.

    ``mode="all"`` yields every axial slice in order; ``mode="foreground"`` draws ``num_samples``
    slices, each from the slices whose ``label_key`` holds foreground with probability
    ``foreground_prob`` (else from all slices). Other entries of the dict are copied into every slice
    dict, which also gets ``"slice"`` (the index along Z). Returns a list of dicts.
    """

    def __init__(
        self,
        keys: KeysCollection = KEYS,
        mode: str = "all",
        num_samples: int = 8,
        foreground_prob: float = 0.5,
        label_key: str = "label",
        allow_missing_keys: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if mode not in ("all", "foreground"):
            raise ValueError(f"mode must be 'all' or 'foreground', got {mode!r}")
        self.mode, self.num_samples, self.foreground_prob, self.label_key = (
            mode,
            num_samples,
            foreground_prob,
            label_key,
        )
        self.indices: list[int] = []

    def randomize(self, data: Mapping[Hashable, object]) -> None:
        """Choose the slice indices to yield for the volume dict ``data`` (kept in ``self.indices``)."""
        depth = int(data[self.first_key(data)].shape[-1])
        if self.mode == "all":
            self.indices = list(range(depth))
            return
        foreground: list[int] = []
        if self.label_key in data:
            label = torch.as_tensor(data[self.label_key])
            foreground = torch.nonzero(label.reshape(-1, depth).ne(0).any(0)).flatten().tolist()
        self.indices = []
        for _ in range(self.num_samples):
            from_foreground = foreground and self.R.random_sample() < self.foreground_prob
            self.indices.append(int(self.R.choice(foreground)) if from_foreground else int(self.R.randint(depth)))

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        self.randomize(data)
        keys = list(self.key_iterator(dict(data)))
        arrays = {key: plain_tensor(data[key]) for key in keys}
        others = {key: value for key, value in data.items() if key not in arrays}
        return [
            {
                **others,
                **{key: array[..., k].contiguous() for key, array in arrays.items()},
                "slice": k,
            }
            for k in self.indices
        ]
