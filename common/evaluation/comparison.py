"""Our numbers beside the paper's published row, as aligned text tables.

:func:`format_comparison` shows one run's summary in both metric modes (:mod:`common.evaluation.case_scores`):
the paper mode compared with the published row, the clinical mode beside it, not compared. :func:`format_seeds`
shows mean +- sd over several training seeds. Dice is in percent beside the published numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from .case_tables import MEAN_ROW, is_missing
from .published import PublishedRow


def format_comparison(
    summary: Sequence[Mapping[str, object]],
    published: PublishedRow,
    label: str = "ours",
    excluded: Mapping[str, int] | None = None,
) -> str:
    """Aligned text table: our paper-mode row beside the published one (with their difference), and our
    clinical-mode numbers beside it, not compared (they follow other rules).

    ``summary`` is the output of :func:`~.case_tables.summarize` over rows of both modes; ``excluded`` is
    :func:`~.case_tables.excluded_pairs` of those rows, printed below the table. Dice is in percent; the
    published HD95 is compared with the paper-mode HD95 in voxels only. A value missing prints as ``-``.
    """
    ours = {str(row["class"]): row for row in summary}
    mean = ours.pop(MEAN_ROW, {})
    names = list(published.class_dice) + [name for name in ours if name not in published.class_dice]

    def value(row: Mapping[str, object], key: str, scale: float = 1.0) -> float | None:
        return None if is_missing(row, key) else scale * float(row[key])

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


def _mean_sd(values: Sequence[float]) -> str:
    """``"mean +- sd"`` of the non-NaN values (sd 0 for one value); ``"-"`` when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return "-"
    sd = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return f"{statistics.fmean(kept):.2f} +- {sd:.2f}"


def format_seeds(summaries: Sequence[Sequence[Mapping]], published: PublishedRow) -> str:
    """Mean +- sd over seeds of the paper-mode and clinical numbers, beside the published row."""
    by_seed = [{str(r["class"]): r for r in summary} for summary in summaries]
    names = list(published.class_dice) + [n for n in by_seed[0] if n not in published.class_dice and n != MEAN_ROW]

    def values(name: str, key: str, scale: float) -> list[float]:
        return [scale * float(s.get(name, {}).get(key, math.nan)) for s in by_seed]

    lines = [
        (f"{n} Dice", values(n, "paper_dice", 100), published.class_dice.get(n), values(n, "dice", 100)) for n in names
    ]
    lines.append(("mean Dice", values(MEAN_ROW, "paper_dice", 100), published.mean_dice, values(MEAN_ROW, "dice", 100)))
    lines.append(
        ("HD95 (voxels)", values(MEAN_ROW, "paper_hd95_vox", 1), published.hd95, values(MEAN_ROW, "hd95_vox", 1))
    )
    lines.append(("HD95 (mm)", [], None, values(MEAN_ROW, "hd95_mm", 1)))
    headers = ("paper-mode (mean +- sd)", "published", "clinical (mean +- sd)")
    width = max(len(name) for name, *_ in lines)
    text = ["  ".join(["".ljust(width)] + [h.rjust(len(h)) for h in headers])]
    for name, paper, reference, clinical in lines:
        cells = (_mean_sd(paper), "-" if reference is None else f"{reference:.2f}", _mean_sd(clinical))
        text.append("  ".join([name.ljust(width)] + [c.rjust(len(h)) for c, h in zip(cells, headers)]))
    return "\n".join(text)
