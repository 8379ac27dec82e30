"""Model uncertainty of a segmentation from test-time flips: the entropy of the flip-averaged probabilities.

The network and its slice-wise inferer run on an image and on its flips along the two in-plane axes; the class
probabilities of the runs, flipped back, are averaged, and the score is the mean over voxels of the averaged
prediction's entropy (softmax: over the classes; multi-label sigmoid: of each channel, summed). Images the flips
disagree on, or where the network hesitates, score high (MONAI Label's ``epistemic`` active learning serves the
highest first). A 2-D network sees each slice alone, so a volume is scored slab by slab, read, oriented and scaled
as :mod:`common.inference.volume_streaming` does for segmentation, and never held whole.
"""

from __future__ import annotations

import torch
from monai.transforms import Compose

from common.inference.engine import Network
from common.inference.inferer import SliceInferer2D
from common.inference.volume_streaming import IMAGE_KEY, preprocessed_slabs, preprocessed_whole, preprocessing_plan
from common.io.lazy_volumes import LazyVolume, as_lazy_volume
from common.io.volumes import Volume

#: spatial dims flipped for each test-time view of a ``[1, C, H, W(, Z)]`` input (slices lie along the last axis)
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))
EPSILON = 1e-6


@torch.no_grad()
def flip_entropy_map(image: torch.Tensor, network: Network, inferer: SliceInferer2D, multilabel: bool) -> torch.Tensor:
    """Entropy ``[1, H, W(, Z)]`` of the flip-averaged probabilities of ``image`` ``[1, C, H, W(, Z)]``;
    ``inferer`` returns probabilities (``output="probabilities"``)."""
    mean = None
    for dims in FLIPS:
        view = inferer(image.flip(dims) if dims else image, network)
        probabilities = torch.as_tensor(view.flip(dims) if dims else view).float()
        mean = probabilities if mean is None else mean.add_(probabilities)
    mean = mean.div_(len(FLIPS)).clamp_(EPSILON, 1 - EPSILON)
    if multilabel:
        return -(mean * mean.log() + (1 - mean) * (1 - mean).log()).sum(1)
    return -(mean * mean.log()).sum(1)


def flip_entropy(image: torch.Tensor, network: Network, inferer: SliceInferer2D, multilabel: bool) -> float:
    """Mean voxel entropy of the flip-averaged probabilities of ``image`` ``[1, C, H, W(, Z)]``."""
    return float(flip_entropy_map(image, network, inferer, multilabel).mean())


def volume_flip_entropy(
    network: Network,
    preprocessing: Compose,
    inferer: SliceInferer2D,
    volume: Volume | LazyVolume,
    multilabel: bool,
) -> float:
    """:func:`flip_entropy` of a volume ``[X, Y, Z(, C)]`` after a bundle's ``preprocessing`` (readers excluded).

    Where :func:`common.inference.volume_streaming.preprocessing_plan` reproduces the preprocessing, slabs of twice the
    inferer's batch size are scored one after another (memory: one slab's probabilities, whatever the volume's
    size); otherwise the volume is preprocessed and scored whole. Both give the same score.
    """
    plan = preprocessing_plan(preprocessing)
    if plan is None:
        image = preprocessed_whole(preprocessing, volume)[IMAGE_KEY]
        return flip_entropy(image[None], network, inferer, multilabel)
    slabs, read = preprocessed_slabs(as_lazy_volume(volume), plan)
    step = 2 * inferer.options.batch_size
    total, count = 0.0, 0
    for start in range(0, slabs.num_slices, step):
        batch = read(start, min(start + step, slabs.num_slices))  # [b, C, H, W]
        entropy = flip_entropy_map(batch.permute(1, 2, 3, 0)[None], network, inferer, multilabel)
        total += float(entropy.sum(dtype=torch.float64))
        count += entropy.numel()
    return total / count
