"""Evaluation handler for the bundles: per-case metric rows, CSV files, and the published row side by side.

Attached to a MONAI ``SupervisedEvaluator`` whose inferer returns label maps. Each item is scored in both
metric modes of :mod:`common.evaluation.case_scores` (``paper`` and ``clinical``): volumes in 3-D per class,
2-D images by foreground Dice, multi-label images per channel. One unreadable or mis-shaped case is reported
and does not stop the others, but the run then ends with an error (non-zero exit): a row with a case left out
is not the paper's row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler
from monai.metrics import DiceMetric

from ..io.tables import write_csv
from ..io.volumes import HDF5_SUFFIXES
from .case_scores import image_foreground_scores, multilabel_scores, volume_scores
from .case_tables import excluded_pairs, summarize
from .comparison import format_comparison
from .published import from_eval_metrics

logger = logging.getLogger(__name__)


def _case_name(item: Mapping, index: int) -> str:
    """The case id of an evaluated item: its datalist ``case``, else its image file name."""
    if "case" in item:
        return str(item["case"])
    image = item.get("image")
    path = getattr(image, "meta", {}).get("filename_or_obj") if isinstance(image, MetaTensor) else None
    return Path(str(path)).name if path else f"item{index:04d}"


def _spacing(label: torch.Tensor) -> list[float] | None:
    """Voxel size per spatial axis in mm from a label's affine, or ``None`` without geometry.

    The TransUNet ``.h5`` volumes keep no spacing and load with an identity affine: they have no geometry, and
    their HD95 in mm is NaN rather than voxels under a mm label.
    """
    if not isinstance(label, MetaTensor) or "affine" not in label.meta:
        return None
    if str(label.meta.get("filename_or_obj", "")).lower().endswith(HDF5_SUFFIXES):
        return None
    affine = torch.as_tensor(label.affine, dtype=torch.float64)
    spatial = label.ndim - 1
    return [float(v) for v in torch.linalg.norm(affine[:spatial, :spatial], dim=0)]


class ClassMeanDice(IgniteMetricHandler):
    """Validation Dice averaged per class first (over the cases where the class is in the truth), then over the
    classes, as the authors' ``DiceMetric(reduction="mean_batch")`` with a per-class meter does; MONAI's
    ``MeanDice`` instead averages over every (case, class) pair. Expects one-hot ``pred`` and ``label``."""

    def __init__(self, include_background: bool = False, output_transform=lambda x: x, save_details: bool = False):
        metric = DiceMetric(include_background=include_background, reduction="mean_batch")
        super().__init__(metric_fn=metric, output_transform=output_transform, save_details=save_details)

    def compute(self) -> float:
        per_class = torch.as_tensor(super().compute(), dtype=torch.float64).reshape(-1)
        return float(per_class.nanmean())


class CaseMetricsWriter:
    """Score every evaluated item; at the end write ``cases.csv`` and ``summary.csv`` and log the comparison.

    Args:
        output_dir: where the CSV files go.
        class_names: foreground class names in label order (label 1 first).
        mode: ``"volume"`` (3-D per-class Dice/HD95), ``"image"`` (2-D foreground Dice) or ``"multilabel"``.
        published: the metadata's ``eval_metrics`` (the paper's row) to print beside ours.
        title: heading of the printed comparison.
        paper_rule: the paper mode's rule for volumes, ``"transunet"`` (Synapse) or ``"per_class"``.
        selection: how the evaluated checkpoint was selected; printed and written to ``summary.csv``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        mode: str = "volume",
        published: Mapping | None = None,
        title: str = "ours",
        paper_rule: str = "per_class",
        selection: str = "",
    ):
        if mode not in ("volume", "image", "multilabel"):
            raise ValueError(f"unknown mode {mode!r}; expected 'volume', 'image' or 'multilabel'")
        self.output_dir, self.class_names, self.mode = Path(output_dir), list(class_names), mode
        self.published, self.title = from_eval_metrics(published), title
        self.paper_rule, self.selection = paper_rule, selection
        self.rows: list[dict] = []
        self.failures: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._score)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _reset(self, engine: Engine) -> None:
        self.rows, self.failures = [], []

    def _score(self, engine: Engine) -> None:
        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item in items:
            case = _case_name(item, len(self.rows) + len(self.failures))
            try:
                self.rows.extend(self.score_item(case, item["pred"], item["label"]))
            except (ValueError, KeyError) as err:
                self.failures.append(f"{case}: {err}")
                logger.error("could not score %s: %s", case, err)

    def score_item(self, case: str, prediction: torch.Tensor, label: torch.Tensor) -> list[dict]:
        """Metric rows for one item: ``prediction`` and ``label`` are channel-first, either ``[1, ...]`` label
        maps or ``[K, ...]`` one-hot / binary channels (as MONAI's ``AsDiscreted(to_onehot=K)`` leaves them)."""
        pred, ref = np.asarray(prediction.detach().cpu()), np.asarray(label.detach().cpu())
        if self.mode == "multilabel":
            return multilabel_scores(case, pred > 0.5, ref > 0.5, self.class_names)
        pred, ref = (a.argmax(0) if a.shape[0] > 1 else a[0].round().astype(np.int64) for a in (pred, ref))
        if self.mode == "image":
            return image_foreground_scores(case, pred > 0, ref > 0)
        return volume_scores(case, pred, ref, self.class_names, _spacing(label), paper_rule=self.paper_rule)

    def _finish(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (self.rows, self.failures))
            if torch.distributed.get_rank() != 0:
                return  # multi-process evaluation: rank 0 writes every process's rows
            self.rows = [row for rows, _ in gathered for row in rows]
            self.failures = [failure for _, failures in gathered for failure in failures]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_csv(self.output_dir / "cases.csv", self.rows)
        summary = summarize(self.rows)
        if self.selection:
            summary = [{**row, "checkpoint_selection": self.selection} for row in summary]
        write_csv(self.output_dir / "summary.csv", summary)
        print(self.report(summary), flush=True)
        engine.state.metrics["case_failures"] = len(self.failures)
        if self.failures:
            raise CaseScoringError(
                f"{len(self.failures)} case(s) could not be scored, so the means above leave them out: "
                + "; ".join(self.failures)
            )

    def report(self, summary: Sequence[Mapping]) -> str:
        """The printout: cases scored, how the checkpoint was selected, the comparison, the failures."""
        report = [f"evaluated {len({r['case'] for r in self.rows})} case(s); metrics in {self.output_dir}"]
        if self.selection:
            report.append(self.selection)
        if self.published is not None:
            report.append(format_comparison(summary, self.published, self.title, excluded_pairs(self.rows)))
        if self.failures:
            report.append(f"{len(self.failures)} case(s) could not be scored:\n  " + "\n  ".join(self.failures))
        return "\n".join(report)


class CaseScoringError(RuntimeError):
    """Some evaluated cases could not be scored; the message names each and why."""
