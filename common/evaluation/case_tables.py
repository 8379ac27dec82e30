"""Tables of per-case metric rows: per-class summaries, the pairs each metric left out, CSV reading.

Per-case rows are dicts ``{"case", "class", <metric>: float, ...}`` (:mod:`common.evaluation.case_scores` makes
them); a summary row is ``{"class", "cases", <metric>: float, ...}``, and the summary ends with the
:data:`MEAN_ROW` row. Dice and Jaccard are fractions in [0, 1] in the tables.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

MEAN_ROW = "mean"
TEXT_COLUMNS = ("case", "class", "checkpoint_selection")
Row = dict[str, object]


def _nanmean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def is_missing(row: Mapping[str, object], key: str) -> bool:
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
        entry["cases"] = sum(1 for r in class_rows if not all(is_missing(r, metric) for metric in metrics))
        for metric in metrics:
            entry[metric] = _nanmean(float(r.get(metric, math.nan)) for r in class_rows)
        summary.append(entry)
    mean: Row = {"class": MEAN_ROW, "cases": len({row["case"] for row in rows})}
    for metric in metrics:
        mean[metric] = _nanmean(float(entry[metric]) for entry in summary)
    return summary + [mean]


def excluded_pairs(rows: Sequence[Mapping[str, object]]) -> dict[str, int]:
    """For each metric column of the per-case ``rows``, how many (case, class) pairs it left out (NaN)."""
    return {metric: sum(1 for row in rows if is_missing(row, metric)) for metric in _metric_columns(rows)}


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
