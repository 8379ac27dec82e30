"""Writing tables of rows (per-case metrics, summaries, structure volumes) as CSV files."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.io.atomic import atomic_path


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, object]]) -> Path:
    """Write ``rows`` (per-case or summary) to a CSV at ``path`` atomically; columns in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update((key, None) for key in row)
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path
