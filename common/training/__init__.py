"""Training: the recipe (schedule, optimiser groups, resume), the losses and the slice-training dataset.

The names bundle configs use as ``_target_`` are exported here.
"""

from .datasets import training_dataset
from .losses import BoundaryDoULoss, DeepSupervisionLoss, DiceCrossEntropyLoss
from .recipe import (
    GradientClipping,
    ResumeFromLatest,
    SaveForResume,
    WarmupCosineLR,
    decay_param_groups,
    iterations_per_epoch,
)

__all__ = [
    "BoundaryDoULoss",
    "DeepSupervisionLoss",
    "DiceCrossEntropyLoss",
    "GradientClipping",
    "ResumeFromLatest",
    "SaveForResume",
    "WarmupCosineLR",
    "decay_param_groups",
    "iterations_per_epoch",
    "training_dataset",
]
