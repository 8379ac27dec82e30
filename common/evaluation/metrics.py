"""Evaluation metrics in two named modes: per-case rows, per-class summaries, CSV tables, paper comparison.

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
  release), never voxels under a mm label. The summaries count the pairs each metric excluded.
- HD95 follows medpy's ``hd95``: surfaces are the mask voxels removed by one erosion with the
  face-connected structure (zero outside the image); the distances from each surface to the other are
  pooled and their 95th percentile (linear interpolation) is taken.
- 2-D datasets: :func:`image_foreground_scores` gives the foreground Dice of one image (label > 0),
  NaN when the ground-truth mask is empty, so only images with a non-empty mask count (both modes).
- Multi-label channels (UW-Madison): :func:`multilabel_scores` gives Dice and Jaccard per channel with
  the same skip rule.

Per-case rows are dicts ``{"case", "class", <metric>: float, ...}``. Dice and Jaccard are fractions in
[0, 1] in the tables; :func:`format_comparison` shows them in percent beside the published numbers.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..data.synapse import SYNAPSE_LABEL_NAMES

MEAN_ROW = "mean"
TEXT_COLUMNS = ("case", "class", "checkpoint_selection")
PAPER_RULES = ("transunet", "per_class")
Row = dict[str, object]


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Numpy view of an array or a (possibly GPU) tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


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


def _nanmean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _missing(row: Mapping[str, object], key: str) -> bool:
    """Whether ``row`` has no value or NaN under ``key``."""
    value = row.get(key)
    return value is None or math.isnan(float(value))


def _metric_columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """Every non-text column of ``rows``, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update((key, None) for key in row if key not in TEXT_COLUMNS)
    return list(columns)


def summarize(rows: Sequence[Mapping[str, object]]) -> list[Row]:
    """Per-class means over cases (NaN skipped), then a ``"mean"`` row: the mean over classes.

    Returns rows ``{"class", "cases", <metric>: float, ...}`` with classes in first-seen order; ``cases``
    counts the cases where the class was scored (some metric not NaN), and in the mean row the distinct cases.
    """
    metrics = _metric_columns(rows)
    by_class: dict[str, list[Mapping[str, object]]] = {}
    for row in rows:
        by_class.setdefault(str(row["class"]), []).append(row)
    summary: list[Row] = []
    for name, class_rows in by_class.items():
        entry: Row = {"class": name}
        entry["cases"] = sum(1 for r in class_rows if not all(_missing(r, metric) for metric in metrics))
        for metric in metrics:
            entry[metric] = _nanmean(float(r.get(metric, math.nan)) for r in class_rows)
        summary.append(entry)
    mean: Row = {"class": MEAN_ROW, "cases": len({row["case"] for row in rows})}
    for metric in metrics:
        mean[metric] = _nanmean(float(entry[metric]) for entry in summary)
    return summary + [mean]


def read_csv(path: str | os.PathLike) -> list[Row]:
    """Rows written by :func:`common.io.tables.write_csv`: text columns as strings, others as int or float, empty cells left out."""
    path = Path(path)
    rows: list[Row] = []
    with path.open(newline="") as handle:
        for line, record in enumerate(csv.DictReader(handle), start=2):
            row: Row = {}
            for key, text in record.items():
                if key in TEXT_COLUMNS:
                    row[key] = text
                elif text:
                    row[key] = _parse_number(text, f"{path}, line {line}, column {key!r}")
            rows.append(row)
    return rows


def _parse_number(text: str, where: str) -> int | float:
    """``int`` if ``text`` is one, else ``float``; a ``ValueError`` naming ``where`` otherwise."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: expected a number, found {text!r}") from None


@dataclass(frozen=True)
class PublishedRow:
    """A published table row: per-class Dice in percent (may be empty), mean Dice in percent, HD95 in voxels."""

    mean_dice: float
    hd95: float | None = None
    class_dice: Mapping[str, float] = field(default_factory=dict)


SYNAPSE_PUBLISHED_CLASSES = SYNAPSE_LABEL_NAMES[1:]  # the paper's table order is the label order


def _synapse_row(class_dice: Sequence[float], mean_dice: float, hd95: float) -> PublishedRow:
    return PublishedRow(mean_dice, hd95, dict(zip(SYNAPSE_PUBLISHED_CLASSES, class_dice, strict=True)))


PUBLISHED_RESULTS: dict[str, dict[str, PublishedRow]] = {
    "synapse": {
        "PVT-GDLA": _synapse_row((92.96, 85.03, 90.16, 69.97, 96.32, 88.99, 88.26, 70.86), 85.32, 12.41),
        "PVT-LinearAttn": _synapse_row((90.46, 83.22, 87.02, 69.00, 95.92, 85.54, 88.23, 67.28), 83.33, 18.62),
        "PVT-SelfAttn": _synapse_row((91.72, 85.67, 87.20, 67.88, 95.92, 85.00, 89.79, 66.93), 83.77, 22.40),
        "PVT-DiffAttn": _synapse_row((92.17, 83.43, 86.94, 68.64, 95.73, 85.74, 88.28, 68.94), 83.73, 23.24),
        "PVT-EMCAD-B2": _synapse_row((92.17, 84.10, 88.08, 68.87, 95.26, 83.92, 88.14, 68.51), 83.63, 15.68),
        "PVT-EMCAD-B2 + XAttnRes": PublishedRow(83.75),  # the XAttnRes paper (seed 003)
    },
    "acdc": {"PVT-GDLA": PublishedRow(92.53)},
    "ham10000": {"PVT-GDLA": PublishedRow(95.01)},
    "ph2": {"PVT-GDLA": PublishedRow(95.59)},
    "busi": {
        "PVT-GDLA": PublishedRow(80.54),
        "PVT-EMCAD-B2": PublishedRow(80.25),
        "PVT-DiffAttn": PublishedRow(79.84),
        "PVT-SelfAttn": PublishedRow(79.42),
        "PVT-LinearAttn": PublishedRow(79.14),
    },
}
"""The paper's table rows (spec "Published results"), by dataset then model."""


def excluded_pairs(rows: Sequence[Mapping[str, object]]) -> dict[str, int]:
    """For each metric column of the per-case ``rows``, how many (case, class) pairs it left out (NaN)."""
    return {metric: sum(1 for row in rows if _missing(row, metric)) for metric in _metric_columns(rows)}


def format_comparison(
    summary: Sequence[Mapping[str, object]],
    published: PublishedRow,
    label: str = "ours",
    excluded: Mapping[str, int] | None = None,
) -> str:
    """Aligned text table: our paper-mode row beside the published one (with their difference), and our
    clinical-mode numbers beside it, not compared (they follow other rules).

    ``summary`` is the output of :func:`summarize` over rows of both modes; ``excluded`` is
    :func:`excluded_pairs` of those rows, printed below the table. Dice is in percent; the published HD95 is
    compared with the paper-mode HD95 in voxels only. A value missing prints as ``-``.
    """
    ours = {str(row["class"]): row for row in summary}
    mean = ours.pop(MEAN_ROW, {})
    names = list(published.class_dice) + [name for name in ours if name not in published.class_dice]

    def value(row: Mapping[str, object], key: str, scale: float = 1.0) -> float | None:
        return None if _missing(row, key) else scale * float(row[key])

    lines = [
        (
            f"{name} Dice",
            value(ours.get(name, {}), "paper_dice", 100.0),
            published.class_dice.get(name),
            value(ours.get(name, {}), "dice", 100.0),
        )
        for name in names
    ]
    lines.append(("mean Dice", value(mean, "paper_dice", 100.0), published.mean_dice, value(mean, "dice", 100.0)))
    lines.append(("HD95 (voxels)", value(mean, "paper_hd95_vox"), published.hd95, value(mean, "hd95_vox")))
    lines.append(("HD95 (mm)", None, None, value(mean, "hd95_mm")))
    headers = (f"{label} paper-mode", "published", "paper-mode - published", f"{label} clinical")
    width = max(len(name) for name, *_ in lines)
    cells = [max(8, len(header)) for header in headers]

    def number(value: float | None, size: int, signed: bool = False) -> str:
        if value is None:
            return "-".rjust(size)
        return f"{value:+{size}.2f}" if signed else f"{value:{size}.2f}"

    text = ["  ".join(["".ljust(width)] + [h.rjust(c) for h, c in zip(headers, cells)])]
    for name, paper_mode, reference, clinical in lines:
        difference = None if paper_mode is None or reference is None else paper_mode - reference
        values = (
            number(paper_mode, cells[0]),
            number(reference, cells[1]),
            number(difference, cells[2], signed=True),
            number(clinical, cells[3]),
        )
        text.append("  ".join((name.ljust(width),) + values))
    if excluded is not None:
        shown = ", ".join(f"{metric} {count}" for metric, count in excluded.items() if metric != "jaccard")
        text.append(f"(case, class) pairs excluded from the means: {shown}")
    return "\n".join(text)
