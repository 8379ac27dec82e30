"""Epistemic (model) uncertainty of unlabelled images by test-time augmentation, for active learning.

MONAI Label's ``epistemic`` strategy serves the unlabelled image with the highest ``epistemic_entropy`` in the
datastore. This scoring method writes that value: the mean voxel entropy of the bundle's flip-averaged
probabilities (:mod:`common.inference.flip_uncertainty`), with the bundle's own pre-processing, network and slice-wise
inferer. Volumes are read and scored slab by slab, never loaded whole. (MONAI Label's dropout-based scoring needs
networks with dropout at inference; these have none, so flips stand in for the dropout samples.)
"""

from __future__ import annotations

import logging
import os
import time

import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from common.inference.flip_uncertainty import flip_entropy, volume_flip_entropy
from common.inference.volume_streaming import split_readers
from common.io.lazy_volumes import open_lazy_volume
from common.segment.segmenter import network_with_weights

from .bundles import Bundle

logger = logging.getLogger(__name__)


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
        after_readers = split_readers(preprocessing)[1]
        scored, skipped, failed, start = 0, 0, 0, time.time()
        for image_id in datastore.get_unlabeled_images():
            path = datastore.get_image_uri(image_id)
            info = datastore.get_image_info(image_id)
            if not self.bundle.accepts(path) or info.get("epistemic_ts") == weights_ts:
                skipped += 1
                continue
            try:
                score = self._score(path, network, preprocessing, after_readers, inferer)
            except (ValueError, OSError) as exc:  # an unreadable image: the others are still scored
                logger.error(f"{self.bundle.name}: {image_id} not scored ({path}: {exc})")
                failed += 1
                continue
            datastore.update_image_info(image_id, {"epistemic_entropy": score, "epistemic_ts": weights_ts})
            logger.info(f"{self.bundle.name}: {image_id} epistemic entropy {score:.4f}")
            scored += 1
        return {"scored": scored, "skipped": skipped, "failed": failed, "latency": round(time.time() - start, 3)}

    def _score(self, path: str, network, preprocessing, after_readers, inferer) -> float:
        """A volume slab by slab (after the readers), a picture through the whole preprocessing."""
        if self.bundle.segments_volumes:
            volume = open_lazy_volume(path)
            return volume_flip_entropy(network, after_readers, inferer, volume, self.bundle.multilabel)
        item = preprocessing({"image": path, "source": path})
        return flip_entropy(item["image"][None], network, inferer, self.bundle.multilabel)

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
        return parser, network_with_weights(parser, weights).to(device).eval()
