"""Per-case metric rows in two named modes: the paper's rules and the clinical scores.

Two modes, kept apart in column names so that nobody confuses them:

- ``paper`` (columns ``paper_dice``, ``paper_hd95_vox``): exactly the rules of the code behind the published
  table. Synapse (rule ``"transunet"``): TransUNet's per-case rule (``calculate_metric_percase``) in voxels,
  a pair with prediction and truth both non-empty scores its Dice and HD95, a prediction where the truth is
  empty scores (1, 0), anything else (a missed organ, a class absent from both) scores (0, 0); every case
  counts in the means. Other datasets (rule ``"per_class"``): the authors' MONAI ``DiceMetric`` usage
  (``include_background=False``, ``reduction="mean_batch"``, empty truth ignored): Dice per class, NaN where
  the truth is empty, averaged per class over the cases first, then over the classes; no HD95 was published.
- ``clinical`` (columns ``dice``, ``hd95_mm``, ``hd95_vox``): :func:`volume_scores` scores every foreground
  class in 3-D. A class absent from the ground truth is skipped (all NaN). A class present in the truth but
  missed by the prediction scores Dice 0 and HD95 NaN (a distance to nothing is undefined). HD95 is in
  millimetres from the volume's real geometry, NaN for a volume without geometry (the TransUNet ``.h5``
  release), never voxels under a mm label. The summaries (:mod:`common.evaluation.case_tables`) count the pairs
  each metric excluded.
- HD95 is medpy's (:func:`common.evaluation.metrics.hd95`).
- 2-D datasets: :func:`image_foreground_scores` gives the foreground Dice of one image (label > 0),
  NaN when the ground-truth mask is empty, so only images with a non-empty mask count (both modes).
- Multi-label channels (UW-Madison): :func:`multilabel_scores` gives Dice and Jaccard per channel with
  the same skip rule.

Rows are dicts ``{"case", "class", <metric>: float, ...}``; Dice and Jaccard are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from .case_tables import TEXT_COLUMNS, Row
from .metrics import dice, hd95, jaccard

PAPER_RULES = ("transunet", "per_class")


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Numpy view of an array or a (possibly GPU) tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def volume_scores(
    case: str,
    prediction: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    spacing: Sequence[float] | None = None,
    paper_rule: str = "per_class",
) -> list[Row]:
    """Rows ``{"case", "class", "paper_dice", ["paper_hd95_vox",] "dice", "hd95_mm", "hd95_vox"}`` for classes
    ``1 .. len(class_names)``.

    ``prediction`` and ``label`` are integer label maps of the same shape (e.g. ``[D, H, W]``) with values
    in ``0 .. len(class_names)``; ``spacing`` is the voxel size per array axis in mm (``None``: no geometry,
    ``hd95_mm`` is NaN). ``paper_rule`` (``"transunet"`` or ``"per_class"``) picks the paper mode's rule; see
    the module docstring for both modes.
    """
    if paper_rule not in PAPER_RULES:
        raise ValueError(f"unknown paper rule {paper_rule!r}; expected one of {PAPER_RULES}")
    prediction, label = _to_numpy(prediction), _to_numpy(label)
    num_labels = len(class_names) + 1
    if prediction.shape != label.shape:
        raise ValueError(f"case {case}: prediction {prediction.shape} and label {label.shape} differ in shape")
    if spacing is not None and len(spacing) != label.ndim:
        raise ValueError(f"case {case}: spacing {tuple(spacing)} does not give one value per axis of {label.shape}")
    prediction = _label_map(case, "prediction", prediction, num_labels)
    label = _label_map(case, "label", label, num_labels)
    confusion = np.bincount((label * num_labels + prediction).ravel(), minlength=num_labels**2)
    confusion = confusion.reshape(num_labels, num_labels)
    prediction_boxes = ndimage.find_objects(prediction, max_label=num_labels - 1)
    label_boxes = ndimage.find_objects(label, max_label=num_labels - 1)
    rows: list[Row] = []
    for index, name in enumerate(class_names, start=1):
        row: Row = {"case": case, "class": name, "dice": math.nan, "hd95_mm": math.nan, "hd95_vox": math.nan}
        reference_size, predicted_size = confusion[index].sum(), confusion[:, index].sum()
        if reference_size > 0:
            row["dice"] = float(2 * confusion[index, index] / (reference_size + predicted_size))
        if reference_size > 0 and predicted_size > 0:
            box = _union_box(prediction_boxes[index - 1], label_boxes[index - 1])
            predicted_mask, reference_mask = prediction[box] == index, label[box] == index
            row["hd95_vox"] = hd95(predicted_mask, reference_mask)
            if spacing is not None:
                row["hd95_mm"] = hd95(predicted_mask, reference_mask, spacing)
        if paper_rule == "transunet":
            paper = _transunet_rule(row, reference_size > 0, predicted_size > 0)
        else:
            paper = {"paper_dice": row["dice"]}
        clinical = {key: value for key, value in row.items() if key not in TEXT_COLUMNS}
        rows.append({"case": case, "class": name, **paper, **clinical})
    return rows


def _transunet_rule(clinical: Row, in_truth: bool, in_prediction: bool) -> Row:
    """TransUNet's ``calculate_metric_percase`` from a clinical row: both present -> (Dice, HD95 in voxels),
    predicted where the truth is empty -> (1, 0), anything else -> (0, 0)."""
    if in_truth and in_prediction:
        return {"paper_dice": clinical["dice"], "paper_hd95_vox": clinical["hd95_vox"]}
    if in_prediction:
        return {"paper_dice": 1.0, "paper_hd95_vox": 0.0}
    return {"paper_dice": 0.0, "paper_hd95_vox": 0.0}


def _label_map(case: str, name: str, array: np.ndarray, num_labels: int) -> np.ndarray:
    """``array`` as int64 after checking it holds integer labels ``0 .. num_labels - 1``."""
    integral = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)
    if not integral and not np.array_equal(array, np.round(array)):
        raise ValueError(f"case {case}: {name} holds non-integer values; expected integer labels")
    if array.size and (array.min() < 0 or array.max() >= num_labels):
        raise ValueError(
            f"case {case}: {name} holds values {array.min()} .. {array.max()}; "
            f"expected integer labels 0 .. {num_labels - 1}"
        )
    return array.astype(np.int64, copy=False)


def _union_box(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    """Smallest box (tuple of slices) holding both boxes."""
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def image_foreground_scores(
    case: str, prediction: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor
) -> list[Row]:
    """One row ``{"case", "class": "foreground", "paper_dice", "dice"}`` for a 2-D image (foreground ``> 0``; NaN
    if no label). Both modes agree here: MONAI's ``DiceMetric`` also ignores an empty truth."""
    prediction, label = _to_numpy(prediction), _to_numpy(label)
    if prediction.shape != label.shape:
        raise ValueError(f"case {case}: prediction {prediction.shape} and label {label.shape} differ in shape")
    score = dice(prediction > 0, label > 0)
    return [{"case": case, "class": "foreground", "paper_dice": score, "dice": score}]


def multilabel_scores(
    case: str,
    prediction: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    class_names: Sequence[str],
) -> list[Row]:
    """Rows ``{"case", "class", "dice", "jaccard"}``, one per channel of ``[K, ...]`` binary masks (``> 0`` is on).

    A channel empty in ``label`` is skipped (NaN), as for label maps.
    """
    prediction, label = _to_numpy(prediction), _to_numpy(label)
    if prediction.shape != label.shape or prediction.shape[0] != len(class_names):
        raise ValueError(
            f"case {case}: prediction {prediction.shape} and label {label.shape}: "
            f"expected the same [K, ...] shape with K = {len(class_names)} channels ({', '.join(class_names)})"
        )
    return [
        {"case": case, "class": name, "dice": dice(p > 0, r > 0), "jaccard": jaccard(p > 0, r > 0)}
        for name, p, r in zip(class_names, prediction, label)
    ]
