"""Evaluation: metric arithmetic and the paper's rules, the published rows, and the evaluator's handlers.

The names bundle configs use as ``_target_`` are exported here, each module loaded when its name is first used.
"""

from ..environment.exports import lazy_exports

#: name -> the submodule that defines it
EXPORTS = {
    "CaseMetricsWriter": "handlers",
    "ClassMeanDice": "handlers",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
