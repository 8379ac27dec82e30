"""Evaluation: metric arithmetic and the paper's rules, the published rows, and the evaluator's handlers.

The names bundle configs use as ``_target_`` are exported here.
"""

from .handlers import CaseMetricsWriter, ClassMeanDice

__all__ = ["CaseMetricsWriter", "ClassMeanDice"]
