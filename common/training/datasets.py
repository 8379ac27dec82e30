"""Training on 2-D slices of 3-D volumes, reading each volume once per epoch.

:class:`VolumeSliceDataset` loads the volumes (by default all of the split, ``volumes_in_memory`` caps it),
cuts them into slices with :class:`common.transforms.slicing.AxialSlicesd`, shuffles the slices of those volumes
together and yields them through the per-slice transform. By default every slice of the split is shuffled
with every other, as the authors' loader over pre-cut slices does (raw BTCV: about 3 GB of memory for the 18
training volumes); a cap of ``n`` shuffles within groups of ``n`` volumes to save memory.
:func:`training_dataset` picks it, or a plain MONAI ``Dataset`` for datasets stored as 2-D files, with the
dataset's published pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
from monai.data import Dataset
from monai.transforms import Compose, apply_transform
from torch.utils.data import IterableDataset, get_worker_info

from common.data.base import DatasetReader
from common.data.input_size import INPUT_SIZE
from common.data.registry import get_dataset
from common.data.splits import DEFAULT_SEED
from common.transforms.pipelines import train_transforms, volume_transforms
from common.transforms.slicing import AxialSlicesd


class VolumeSliceDataset(IterableDataset):
    """Yields slice dicts from volume datalist entries; iterate once per epoch.

    ``volume_transform`` turns an entry into a (C, X, Y, Z) volume dict, ``slicer`` (an
    ``AxialSlicesd``) turns that into slice dicts, ``slice_transform`` (optional) augments each.
    With ``shuffle``, volume order and slice order change every epoch (seeded by ``seed``, the epoch
    and the DataLoader worker's seed). DataLoader workers split the volumes between them.
    """

    def __init__(
        self,
        data: Sequence[dict],
        volume_transform: Callable,
        slicer: Callable,
        slice_transform: Callable | None = None,
        shuffle: bool = True,
        volumes_in_memory: int | None = None,
        seed: int = DEFAULT_SEED,
    ) -> None:
        self.data = list(data)
        self.volume_transform, self.slicer, self.slice_transform = volume_transform, slicer, slice_transform
        in_memory = len(self.data) if volumes_in_memory is None else volumes_in_memory
        self.shuffle, self.volumes_in_memory, self.seed = shuffle, max(1, in_memory), seed
        self.epoch = 0

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        worker_seed = worker.seed % 2**32 if worker is not None else 0
        rng = np.random.default_rng([self.seed, self.epoch, worker_seed])
        self.epoch += 1
        mine = self.data[worker_id::workers]
        order = rng.permutation(len(mine)) if self.shuffle else np.arange(len(mine))
        for start in range(0, len(order), self.volumes_in_memory):
            pool = []
            for index in order[start : start + self.volumes_in_memory]:
                volume = apply_transform(self.volume_transform, dict(mine[index]))
                pool.extend(apply_transform(self.slicer, volume))
            if self.shuffle:
                pool = [pool[i] for i in rng.permutation(len(pool))]
            for item in pool:
                yield apply_transform(self.slice_transform, item) if self.slice_transform is not None else item


def training_dataset(
    dataset: str | DatasetReader,
    datalist: Sequence[dict],
    spatial_size: Sequence[int] = INPUT_SIZE,
    seed: int = DEFAULT_SEED,
    slices: str = "all",
    volumes_in_memory: int | None = None,
    transform: Compose | None = None,
    volume_transform: Callable | None = None,
    **slicer_options,
) -> Dataset | VolumeSliceDataset:
    """The training dataset with the published pipeline: 2-D files map one to one, volumes are sliced.

    ``slices``: "all" axial slices of every volume (the published recipe) or "foreground"
    (``num_samples`` per volume, ``foreground_prob`` of them containing labels). ``volumes_in_memory``:
    ``None`` shuffles the slices across the whole split (the authors'), ``n`` within groups of ``n`` volumes.
    ``transform`` (per picture or slice; seeded here with ``seed``) and ``volume_transform`` (per volume) replace
    the dataset's published pipelines, :func:`~common.transforms.pipelines.train_transforms` and
    :func:`~common.transforms.pipelines.volume_transforms`; the bundles pass them in from their ``train#preprocessing`` and
    ``train#volume_preprocessing``.
    """
    reader = get_dataset(dataset)
    if transform is None:
        augment = train_transforms(reader, spatial_size, seed)
    else:
        augment = transform.set_random_state(seed=seed)
    if reader.stored_as == "slices":
        return Dataset(list(datalist), augment)
    slicer = AxialSlicesd(mode=slices, **slicer_options)
    slicer.set_random_state(seed)
    volumes = volume_transform if volume_transform is not None else volume_transforms(reader)
    return VolumeSliceDataset(datalist, volumes, slicer, augment, seed=seed, volumes_in_memory=volumes_in_memory)
