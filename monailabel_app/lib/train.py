"""MONAI Label training with a bundle's ``configs/train.json`` on the datastore's labelled images.

MONAI Label's bundle trainer runs the bundle's ``run`` with overrides; this project's train configs take their
data from ``train#datalist`` and ``validate#datalist`` (the model zoo's ``train#dataset#data`` is an argument
of the bundle's dataset factory here), so those are the ids overridden with the datastore's items. The request's
``max_epochs`` sets ``train#trainer#max_epochs``, which the bundles' learning-rate schedule reads too.
"""

from __future__ import annotations

import logging
import os

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.train.bundle import BundleConstants, BundleTrainTask

from .bundles import Bundle

logger = logging.getLogger(__name__)


class DatalistIds(BundleConstants):
    """Config ids of this project's train configs that receive the datastore's datalists."""

    def key_train_dataset_data(self) -> str:
        return "train#datalist"

    def key_validate_dataset_data(self) -> str:
        return "validate#datalist"


class BundleTraining(BundleTrainTask):
    """Train ``bundle`` on the datastore's labelled images of the kind it segments (volumes or 2-D pictures).

    The request's ``val_split`` (default 0.2) holds images out for validation; when that leaves none (one
    labelled image, or ``val_split`` 0) the training images are validated on, so the bundle's checkpoint
    saver, which keeps the best validation score, still writes ``models/model.pt``.
    """

    def __init__(self, bundle: Bundle, conf: dict[str, str]):
        super().__init__(str(bundle.path), conf, const=DatalistIds(), load_strict=True)
        self.bundle = bundle

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list[dict]) -> None:
        """Start from ``models/model.pt`` (request ``pretrained``, default true) through the bundle's own switch:
        its disabled ``CheckpointLoader`` (``load_pretrain``) is enabled and pointed at the file. Bundles without
        one get MONAI Label's loader."""
        switchable = [h for h in train_handlers if h.get("_target_") == "CheckpointLoader" and "_disabled_" in h]
        if not switchable:
            super()._load_checkpoint(model_pytorch, pretrained, train_handlers)
            return
        use = bool(pretrained) and os.path.exists(model_pytorch)
        for handler in switchable:
            handler["_disabled_"] = not use
            handler["load_path"] = model_pytorch
        logger.info(f"{self.bundle.name}: {'starting from ' + model_pytorch if use else 'starting from scratch'}")

    def _fetch_datalist(self, request: dict, datastore: Datastore) -> list[dict]:
        """The labelled datastore items this bundle can read, as ``{"image", "label"}`` dicts."""
        items = super()._fetch_datalist(request, datastore)
        usable = [item for item in items if self.bundle.accepts(item["image"])]
        if len(usable) < len(items):
            logger.info(
                f"{self.bundle.name}: training on {len(usable)} of {len(items)} labelled images "
                f"(the others are not {'volumes' if self.bundle.segments_volumes else '2-D pictures'})"
            )
        if not usable:
            kind = "volumes" if self.bundle.segments_volumes else "2-D pictures"
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT,
                f"model {self.bundle.name!r} trains on labelled {kind}; the datastore has {len(items)} labelled "
                f"images and none of them is one",
            )
        return usable

    def _partition_datalist(self, datalist: list[dict], request: dict, shuffle: bool = False):
        """(train, validation) lists; an empty validation list becomes the training list (see the class note)."""
        train, validation = super()._partition_datalist(datalist, request, shuffle)
        if validation is not None and not validation:
            logger.warning(f"{self.bundle.name}: no image left for validation; validating on the training images")
            validation = list(train)
        return train, validation
