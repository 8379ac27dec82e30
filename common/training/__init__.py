"""Training: the recipe (schedule, optimiser groups, resume), the losses and the slice-training dataset.

The names bundle configs use as ``_target_`` are exported here, each module loaded when its name is first used.
"""

from ..environment.exports import lazy_exports

#: name -> the submodule that defines it
EXPORTS = {
    "BoundaryDoULoss": "losses",
    "DeepSupervisionLoss": "losses",
    "DiceCrossEntropyLoss": "losses",
    "GradientClipping": "recipe",
    "ResumeFromLatest": "recipe",
    "SaveForResume": "recipe",
    "WarmupCosineLR": "recipe",
    "decay_param_groups": "recipe",
    "iterations_per_epoch": "recipe",
    "training_dataset": "datasets",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
