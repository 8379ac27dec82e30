"""Epistemic (model) uncertainty of unlabelled images by test-time augmentation, for active learning.

MONAI Label's ``epistemic`` strategy serves the unlabelled image with the highest ``epistemic_entropy`` in the
datastore. This scoring method writes that value: the bundle's own pre-processing, network and slice-wise inferer
run on the image and on its flips along the two in-plane axes; the class probabilities of the runs, flipped back,
are averaged, and the score is the mean over voxels of the averaged prediction's entropy (softmax bundles:
over the classes; multi-label bundles: of each sigmoid channel, summed). Images the flips disagree on, or where
the network hesitates, score high. (MONAI Label's dropout-based scoring needs networks with dropout at
inference; these have none, so flips stand in for the dropout samples.)
"""

from __future__ import annotations

import logging
import os
import time

import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from .bundles import Bundle

logger = logging.getLogger(__name__)

#: spatial dims flipped for each test-time view of a [B, C, H, W(, Z)] input (slices lie along the last axis)
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))
EPSILON = 1e-6


class FlipEntropyScoring(ScoringMethod):
    """Write ``epistemic_entropy`` (and ``epistemic_ts``, the weights' mtime) for every unlabelled image
    ``bundle`` segments; images already scored with the current weights are skipped."""

    def __init__(self, bundle: Bundle, device: str = "cpu"):
        super().__init__(f"Epistemic uncertainty from test-time flips with {bundle.name}")
        self.bundle, self.device = bundle, device

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        weights = self.bundle.path / "models" / "model.pt"
        if not weights.is_file():
            return {"scored": 0, "skipped": 0, "reason": f"{weights}: no trained weights"}
        weights_ts = int(os.stat(weights).st_mtime)
        parser, network = self._pipeline(weights, request.get("device", self.device))
        preprocessing, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
        scored, skipped, start = 0, 0, time.time()
        for image_id in datastore.get_unlabeled_images():
            path = datastore.get_image_uri(image_id)
            info = datastore.get_image_info(image_id)
            if not self.bundle.accepts(path) or info.get("epistemic_ts") == weights_ts:
                skipped += 1
                continue
            item = preprocessing({"image": path, "source": path})
            score = flip_entropy(item["image"][None], network, inferer, self.bundle.multilabel)
            datastore.update_image_info(image_id, {"epistemic_entropy": score, "epistemic_ts": weights_ts})
            logger.info(f"{self.bundle.name}: {image_id} epistemic entropy {score:.4f}")
            scored += 1
        return {"scored": scored, "skipped": skipped, "latency": round(time.time() - start, 3)}

    def _pipeline(self, weights, device: str) -> tuple[ConfigParser, torch.nn.Module]:
        parser = ConfigParser()
        parser.read_config(str(self.bundle.path / "configs" / "inference.json"))
        parser.update(
            {
                "bundle_root": str(self.bundle.path),
                "device": f"$torch.device('{device}')",
                "inferer#output": "probabilities",
            }
        )
        network = parser.get_parsed_content("network_def").to(device)
        network.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
        return parser, network.eval()


@torch.no_grad()
def flip_entropy(image: torch.Tensor, network: torch.nn.Module, inferer, multilabel: bool) -> float:
    """Mean voxel entropy of the flip-averaged probabilities ``[1, K, ...]`` of ``image`` ``[1, C, ...]``."""
    views = [inferer(image.flip(dims) if dims else image, network) for dims in FLIPS]
    probabilities = torch.stack([torch.as_tensor(v.flip(d) if d else v).float() for v, d in zip(views, FLIPS)])
    mean = probabilities.mean(0).clamp(EPSILON, 1 - EPSILON)
    if multilabel:
        entropy = -(mean * mean.log() + (1 - mean) * (1 - mean).log()).sum(1)
    else:
        entropy = -(mean * mean.log()).sum(1)
    return float(entropy.mean())
