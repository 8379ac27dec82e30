"""A volume bundle's ``configs/inference.json`` run slab by slab: the evaluator's iteration for volume files.

MONAI's ``SupervisedEvaluator`` would load, convert, orient and scale each volume whole in its data loader, run
the inferer and invert the orientation on the whole prediction. A volume bundle's ``inference.json`` gives it
:class:`StreamedVolumeIteration` as its ``iteration_update`` instead: the data loader only hands over file
names, and each volume is read through :func:`common.io.lazy_volumes.open_lazy_volume` (NIfTI, NRRD, MetaImage
or a DICOM series folder, validated before the network runs) and segmented by
:func:`common.inference.volume_streaming.segment_volume` with the bundle's own preprocessing and inferer, a few slices at a
time where the pipeline allows it. The uint8 label map, already on the input's voxel grid, then goes through the
bundle's postprocessing without its ``Invertd`` (nothing is left to invert); the bundles save it with
:class:`common.io.mask_saving.SaveMask3Dd`, which writes it as it is (MONAI's ``SaveImaged`` would first make a
float32 copy of the whole label volume). A case that cannot be read or segmented is logged with its
file name and the others go on; the run then ends with an error naming every failed case.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.networks.utils import eval_mode
from monai.transforms import Compose

from common.inference.volume_streaming import (
    IMAGE_KEY,
    labels_on_input_grid,
    segment_volume,
    split_readers,
    without_inversion,
)
from common.io.lazy_volumes import open_lazy_volume

logger = logging.getLogger(__name__)

PRED_KEY = "pred"


class FailedCasesError(RuntimeError):
    """Some cases of an inference run could not be segmented; the message names each file and why."""


class StreamedVolumeIteration:
    """``iteration_update`` of a ``SupervisedEvaluator`` whose batches are ``{"image": [path, ...]}``.

    Args:
        preprocessing: the bundle's preprocessing (readers first, as in ``inference.json``); the readers are not
            run, the rest is applied slab by slab (or to the whole volume where it cannot be streamed).
        postprocessing: the bundle's postprocessing; its ``Invertd`` steps are skipped, the rest (``SaveImaged``)
            receives ``{"pred": MetaTensor [1, X, Y, Z] uint8}`` with the input's affine and file name.
    """

    def __init__(self, preprocessing: Compose | Sequence, postprocessing: Compose | Sequence):
        self.preprocessing = split_readers(preprocessing)[1]
        self.postprocessing = Compose(without_inversion(postprocessing))
        self.failures: list[str] = []

    def __call__(self, engine: Engine, batch: Mapping) -> dict:
        """Segment and post-process every volume of ``batch``; returns ``{"image": paths, "pred": label maps}``."""
        if not engine.has_event_handler(self._raise_failures, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self._raise_failures)
        paths = [item[IMAGE_KEY] for item in decollate_batch(batch, detach=False)]
        predictions = []
        with eval_mode(engine.network):
            for path in paths:
                try:
                    predictions.append(self._segment(engine, str(path)))
                except (ValueError, OSError) as exc:
                    reason = str(exc) if str(path) in str(exc) else f"{path}: {exc}"  # errors here name the file
                    logger.error("not segmented: %s", reason)
                    self.failures.append(reason)
        return {IMAGE_KEY: paths, PRED_KEY: predictions}

    def _segment(self, engine: Engine, path: str) -> MetaTensor:
        volume = open_lazy_volume(path)
        labels = segment_volume(engine.network, self.preprocessing, engine.inferer, volume)
        return self.postprocessing({PRED_KEY: labels_on_input_grid(labels, volume)})[PRED_KEY]

    def _raise_failures(self, engine: Engine) -> None:
        if self.failures:
            failures, self.failures = self.failures, []
            raise FailedCasesError(f"{len(failures)} case(s) not segmented:\n" + "\n".join(failures))
