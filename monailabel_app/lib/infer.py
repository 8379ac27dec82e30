"""MONAI Label inference with a bundle's own configs: its pre-processing, its inferer, its post-processing.

The bundle's ``inferer`` (``common.inference.inferer.SliceInferer2D`` in this project) runs its 2-D network slice by
slice over volumes and directly on 2-D pictures. Volumes are not loaded whole: they are read, scaled, segmented
and written a few slices at a time with the bundle's own transforms (:func:`common.inference.volume_streaming.segment_volume`,
the path ``segment`` and the bundles' ``inference.json`` take), so the labels come back on the input's voxel grid
and the bundle's ``Invertd`` is skipped. Post-processing steps that save files are dropped: the mask goes back to
the client instead, written here with the input's geometry.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monai.data import MetaTensor
from monai.transforms import SaveImaged
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.infer.bundle import BundleInferTask

from common.inference.volume_streaming import (
    labels_on_input_grid,
    segment_volume,
    split_readers,
    streaming_plan,
    without_inversion,
)
from common.io.images import picture_size
from common.io.lazy_volumes import open_lazy_volume
from common.io.mask_saving import SaveMask2Dd, SaveMask3Dd
from common.io.writers import write_nifti, write_png_mask
from common.segment.segmenter import network_with_weights

from .bundles import Bundle

logger = logging.getLogger(__name__)

#: Post-processing transforms that write files; MONAI Label returns the mask instead.
FILE_SAVING_TRANSFORMS = [SaveImaged, SaveMask2Dd, SaveMask3Dd]
#: where a volume request carries the bundle's preprocessing (after its readers) from pre_transforms to run_inferer
VOLUME_PREPROCESSING_KEY = "volume_preprocessing"


class BundleSegmentation(BundleInferTask):
    """Segment a datastore image with ``bundle`` and return the label mask.

    Volumes come back as NIfTI label maps ``[X, Y, Z]`` (uint8) with the affine the bundle's post-processing
    leaves on the prediction (the input's, when it inverts its orientation step); 2-D pictures as PNG masks
    ``[H, W]`` of label values 0..K-1, row 0 at the top, the picture's size. A multi-label bundle's channels
    ``[K, ...]`` become one label map with channel ``k`` as value ``k + 1`` (see :func:`label_map`).
    """

    def __init__(self, bundle: Bundle, conf: dict[str, str]):
        super().__init__(
            str(bundle.path),
            conf,
            post_filter=FILE_SAVING_TRANSFORMS,
            add_post_restore=False,
            load_strict=True,
            extend_load_image=False,  # keep the bundle's own readers, which split_readers recognises
        )
        self.bundle = bundle
        self.dimension = bundle.dimension
        # MONAI Label built network_def above, as a template to deep-copy for each device. It is let go: the
        # network is built when first asked for (MONAI Label's conf "preload" asks at start-up), so a server that
        # offers many bundles holds only the networks it uses
        self.network = None
        self.bundle_config.ref_resolver.remove_resolved_content("network_def")
        # the label values of the maps this task returns (a multi-label bundle's channel k is value k + 1)
        self.labels = {name.lower(): value for value, name in bundle.label_names.items() if value != 0}

    def __call__(self, request: dict, callbacks: dict | None = None) -> tuple[str | None, dict]:
        """Refuse images of the wrong kind (a picture for a volume bundle, or the reverse; HTTP 422), then infer."""
        image = request.get("image")
        if isinstance(image, str) and not self.bundle.accepts(image):
            expected = "volumes (NIfTI, NRRD, ...)" if self.bundle.segments_volumes else "2-D pictures (PNG, JPEG, ...)"
            # an HTTP error, so that the viewer shows the reason rather than "Internal Server Error"
            raise HTTPException(
                status_code=422, detail=f"{image}: model {self.bundle.name!r} segments {expected}; this file is not one"
            )
        return super().__call__(request, callbacks)

    def _get_network(self, device: str, data: dict | None) -> torch.nn.Module:
        """The bundle's network on ``device`` with ``models/model.pt`` (read with ``weights_only=True``), built
        on first use and kept until that file changes. MONAI Label's own version loads the checkpoint into a deep
        copy of its template, holding the weights three times while it loads and twice after; here they are held
        once per device."""
        path = Path(self.get_path())
        modified = path.stat().st_mtime
        cached = self._networks.pop(device, None)
        if cached is not None and cached[1] == modified:
            self._networks[device] = cached
            return cached[0]
        del cached  # an outdated network goes before its successor is built
        network = network_with_weights(self.bundle_config, path).to(device).eval()
        self.bundle_config.ref_resolver.remove_resolved_content("network_def")  # held here only; the next is new
        self._networks[device] = (network, modified)
        return network

    def pre_transforms(self, data: dict | None = None) -> list:
        """A picture bundle's preprocessing; none for a volume, which :meth:`run_inferer` reads slab by slab."""
        transforms = super().pre_transforms(data)
        if not self.bundle.segments_volumes or data is None:
            return transforms
        data[VOLUME_PREPROCESSING_KEY] = split_readers(transforms)[1]
        return []

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict:
        """Volumes: uint8 labels ``[1, X, Y, Z]`` on the input's grid with its affine, segmented a few slices at a
        time where the bundle's pipeline allows (else whole, as :func:`segment_volume` decides); pictures: as usual."""
        preprocessing = data.pop(VOLUME_PREPROCESSING_KEY, None)
        if preprocessing is None:
            return super().run_inferer(data, convert_to_batch=convert_to_batch, device=device)
        path = str(data.get("image_path", data.get("image")))
        inferer = self.inferer(data)
        try:
            volume = open_lazy_volume(path)
            network = self._get_network(device, data)
            streamed = streaming_plan(preprocessing, inferer) is not None
            labels = segment_volume(network, preprocessing, inferer, volume)
        except ValueError as exc:  # the volume is not one the bundle can read: say why (HTTP 422)
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        logger.info(f"{path}: segmented {'slab by slab' if streamed else 'whole'} with {self.bundle.name}")
        data[self.output_label_key] = labels_on_input_grid(labels, volume)
        return data

    def post_transforms(self, data: dict | None = None) -> list:
        """The bundle's postprocessing without file writers, and for volumes without ``Invertd`` (the labels are on
        the input's grid already)."""
        transforms = super().post_transforms(data)
        return without_inversion(transforms) if self.bundle.segments_volumes else transforms

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[str, dict]:
        """Write the prediction (a ``[1, ...]`` label map) to a temporary file; returns (file, result json)."""
        source = str(data.get("image_path", data.get("image")))
        prediction = data[self.output_label_key]
        labels = label_map(prediction, source, multilabel=self.bundle.multilabel)
        if self.bundle.segments_volumes:
            if not isinstance(prediction, MetaTensor):
                raise MONAILabelException(
                    MONAILabelError.INFERENCE_ERROR,
                    f"{source}: model {self.bundle.name!r} returned no geometry; its inferer must keep the input's MetaTensor",
                )
            output = write_nifti(labels, prediction.affine, temporary_file(".nii.gz"))
        else:
            expected = picture_size(source)
            if labels.shape != expected:
                raise MONAILabelException(
                    MONAILabelError.INFERENCE_ERROR,
                    f"{source}: model {self.bundle.name!r} returned a {labels.shape} mask for a {expected} (H, W) picture",
                )
            output = write_png_mask(labels, temporary_file(".png"))
        return str(output), data.get(self.output_json_key, {})


def label_map(prediction: torch.Tensor | np.ndarray, source: str, multilabel: bool = False) -> np.ndarray:
    """A ``[1, ...]`` label map as an array ``[...]`` without the channel axis (the writers check its values).

    ``multilabel``: the prediction is ``[K, ...]`` binary channels (sigmoid, thresholded by the bundle's inferer);
    the result is 0 where no channel is on and ``k + 1`` where channel ``k`` is (the highest such ``k`` where
    channels overlap, since a label map holds one value per pixel).
    """
    array = prediction.detach().cpu().numpy() if isinstance(prediction, torch.Tensor) else np.asarray(prediction)
    if multilabel and array.ndim >= 3:
        labels = np.zeros(array.shape[1:], dtype=np.uint8)
        for channel in range(array.shape[0]):
            labels[array[channel] > 0.5] = channel + 1
        return labels
    if array.ndim < 3 or array.shape[0] != 1:
        raise MONAILabelException(
            MONAILabelError.INFERENCE_ERROR,
            f"{source}: expected a label map [1, ...] from the bundle, found shape {tuple(array.shape)}",
        )
    return array[0]


def temporary_file(suffix: str) -> str:
    """A new empty temporary file ending in ``suffix``; MONAI Label removes it after sending it."""
    handle, path = tempfile.mkstemp(suffix=suffix, prefix="monailabel_")
    os.close(handle)
    return path
