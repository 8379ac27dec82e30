"""The paper's published table rows (one home), and how a bundle's metadata carries one.

:data:`PUBLISHED_RESULTS` holds every published row by dataset, then by the model's name in the paper's tables
(a network's ``paper_model`` fact, a bundle spec's ``paper_model``). A bundle's ``metadata.json`` carries its row
as ``eval_metrics`` (:func:`to_eval_metrics`); the evaluator and ``reproduce`` read it back
(:func:`from_eval_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..data.synapse import SYNAPSE_LABEL_NAMES

EVAL_METRICS_UNITS = "Dice in percent; HD95 in voxels, as published"


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


def published_row(dataset: str, paper_model: str | None) -> PublishedRow | None:
    """The paper's row for ``paper_model`` on ``dataset``, or ``None`` where the papers report none."""
    return PUBLISHED_RESULTS.get(dataset, {}).get(paper_model) if paper_model is not None else None


def published_rows(paper_model: str | None) -> dict[str, PublishedRow]:
    """The paper's rows for ``paper_model`` (a network's ``paper_model`` fact) by dataset; empty when it has none."""
    if paper_model is None:
        return {}
    return {dataset: rows[paper_model] for dataset, rows in PUBLISHED_RESULTS.items() if paper_model in rows}


def to_eval_metrics(row: PublishedRow) -> dict:
    """``row`` as a bundle metadata's ``eval_metrics``: Dice in percent, HD95 in voxels, and their units."""
    metrics: dict = {"mean_dice": row.mean_dice}
    if row.hd95 is not None:
        metrics["hd95"] = row.hd95
    if row.class_dice:
        metrics["class_dice"] = dict(row.class_dice)
    metrics["units"] = EVAL_METRICS_UNITS
    return metrics


def from_eval_metrics(eval_metrics: Mapping | None) -> PublishedRow | None:
    """The metadata's ``eval_metrics`` (Dice in percent, HD95 in voxels, as published) as a :class:`PublishedRow`;
    ``None`` where there is no published row (no entry, or the bundles' "not published" text)."""
    if not eval_metrics or not isinstance(eval_metrics.get("mean_dice"), (int, float)):
        return None
    return PublishedRow(
        mean_dice=float(eval_metrics["mean_dice"]),
        hd95=None if eval_metrics.get("hd95") is None else float(eval_metrics["hd95"]),
        class_dice={str(k): float(v) for k, v in eval_metrics.get("class_dice", {}).items()},
    )
