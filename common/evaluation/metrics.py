"""Mask arithmetic: Dice, Jaccard, surfaces and HD95 of boolean masks of any shape.

HD95 follows medpy's ``hd95``: surfaces are the mask voxels removed by one erosion with the face-connected
structure (zero outside the image); the distances from each surface to the other are pooled and their 95th
percentile (linear interpolation) is taken. The per-case rows of both metric modes are built from these in
:mod:`common.evaluation.case_scores`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice ``2|P & R| / (|P| + |R|)`` of two boolean masks of any shape; NaN when ``reference`` is empty."""
    reference_size = int(reference.sum())
    if reference_size == 0:
        return math.nan
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / (int(prediction.sum()) + reference_size)


def jaccard(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Jaccard ``|P & R| / |P | R|`` of two boolean masks; NaN when ``reference`` is empty."""
    if not reference.any():
        return math.nan
    return int(np.logical_and(prediction, reference).sum()) / int(np.logical_or(prediction, reference).sum())


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: those one face-connected erosion removes (zero outside the array)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile of the pooled symmetric surface distances between two non-empty boolean masks.

    ``spacing`` gives the voxel size along each array axis (``None``: 1 per axis, distances in voxels).
    The work is done in the bounding box of ``prediction | reference``, which holds every surface voxel,
    so the distances are exact.
    """
    if not prediction.any() or not reference.any():
        raise ValueError("hd95 needs two non-empty masks")
    if spacing is not None and len(spacing) != prediction.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {prediction.ndim}-D mask")
    (box,) = ndimage.find_objects((prediction | reference).astype(np.uint8))
    prediction_surface, reference_surface = surface(prediction[box]), surface(reference[box])
    to_reference = ndimage.distance_transform_edt(~reference_surface, sampling=spacing)[prediction_surface]
    to_prediction = ndimage.distance_transform_edt(~prediction_surface, sampling=spacing)[reference_surface]
    return float(np.percentile(np.concatenate([to_reference, to_prediction]), 95))
