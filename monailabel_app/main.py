"""MONAI Label app serving this repository's bundles, fully offline.

    .venv-label/bin/python -m common.apps.label_server start_server --app monailabel_app --studies DIR --conf models all

Conf keys: ``models`` ("all", the default, or comma-separated bundle folder names), ``bundles`` (the folder
holding them; default: the repository's ``bundles/``), ``epistemic_model`` (the bundle whose test-time-flip
uncertainty ranks images for the ``epistemic`` strategy; default: the first selected bundle with weights) and
MONAI Label's ``preload``. Every selected bundle with ``models/model.pt`` is offered for inference, every one with
``configs/train.json`` for training. Active learning: ``random``, ``first`` (the first unlabelled image by name)
and ``epistemic`` (the highest flip-entropy score, computed by the ``epistemic`` scoring method).
"""

from __future__ import annotations

import logging

from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from common import __version__
from common.bundle.location import DEFAULT_ROOT
from lib.bundles import select_bundles
from lib.datastore import StreamingDICOMWebDatastore
from lib.infer import BundleSegmentation
from lib.scoring import FlipEntropyScoring
from lib.train import BundleTraining

logger = logging.getLogger(__name__)


class BundlesApp(MONAILabelApp):
    """One inference and one training task per selected bundle, named after the bundle folder."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.bundles = select_bundles(conf.get("bundles", DEFAULT_ROOT), conf.get("models", "all"))
        logger.info(f"Bundles: {', '.join(self.bundles)}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="gdla-bundles",
            description="PVT-GDLA and related 2-D segmentation bundles; volumes are segmented slice by slice",
            version=__version__,
        )

    def init_remote_datastore(self) -> Datastore:
        """MONAI Label's remote datastore, as its settings configure it; a DICOMweb one fetches and converts series
        without holding them whole (:class:`StreamingDICOMWebDatastore`, which adds no state, only methods)."""
        datastore = super().init_remote_datastore()
        if type(datastore) is DICOMWebDatastore:
            datastore.__class__ = StreamingDICOMWebDatastore
        return datastore

    def init_infers(self) -> dict[str, InferTask]:
        tasks = {name: BundleSegmentation(bundle, self.conf) for name, bundle in self.bundles.items()}
        return {name: task for name, task in tasks.items() if task.is_valid()}

    def init_trainers(self) -> dict[str, TrainTask]:
        tasks = {name: BundleTraining(bundle, self.conf) for name, bundle in self.bundles.items()}
        return {name: task for name, task in tasks.items() if task.is_valid()}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First(), "epistemic": Epistemic()}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        name = self.conf.get("epistemic_model") or next(
            (n for n, b in self.bundles.items() if (b.path / "models" / "model.pt").is_file()), None
        )
        if name is None:
            return {}
        if name not in self.bundles:
            raise ValueError(f"epistemic_model {name!r}: expected one of the served models {', '.join(self.bundles)}")
        return {"epistemic": FlipEntropyScoring(self.bundles[name])}
