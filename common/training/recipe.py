"""Training pieces the bundle configs name: parameter groups, the LR schedule, gradient clipping, resuming.

The bundles train with MONAI's ``SupervisedTrainer`` (ignite). These are the parts of the recipe MONAI does not
provide as such: AdamW without weight decay on biases and 1-D parameters, a cosine schedule stepped per
iteration after a linear warm-up, clipping between backward and step, and resuming a killed run from the last
complete epoch (model, optimizer, scheduler and epoch counter).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_PREFIX = "last"


def decay_param_groups(network: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: ``weight_decay`` on weight matrices and kernels, none on biases and 1-D parameters."""
    decay, no_decay = [], []
    for name, parameter in network.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine_lr(
    step: int,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    start_lr: float = 1e-6,
    min_lr: float = 1e-6,
    warmup_prefix: bool = False,
) -> float:
    """Learning rate at iteration ``step``: linear ``start_lr -> base_lr`` over ``warmup_steps``, cosine to ``min_lr``.

    By default the cosine runs over all ``total_steps`` counted from step 0 and the warm-up overrides its start,
    as timm's ``CosineLRScheduler(warmup_prefix=False, cycle_limit=1, t_in_epochs=False)`` in the authors' code.
    ``warmup_prefix=True`` starts the cosine after the warm-up instead (over ``total_steps - warmup_steps``).
    """
    if step < warmup_steps:
        return start_lr + (base_lr - start_lr) * step / warmup_steps
    if warmup_prefix:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    else:
        progress = step / max(1, total_steps)
    if progress >= 1.0:
        return min_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(LambdaLR):
    """Per-iteration warm-up + cosine schedule (:func:`warmup_cosine_lr`) for every parameter group."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int,
        total_steps: int,
        start_lr: float = 1e-6,
        min_lr: float = 1e-6,
        warmup_prefix: bool = False,
    ):
        def factor(base_lr: float):
            return lambda step: (
                warmup_cosine_lr(step, base_lr, warmup_steps, total_steps, start_lr, min_lr, warmup_prefix) / base_lr
            )

        super().__init__(optimizer, [factor(group["lr"]) for group in optimizer.param_groups])


class GradientClipping:
    """Clip the global gradient norm to ``max_norm`` between backward and optimizer step (MONAI trainers)."""

    def __init__(self, max_norm: float = 1.0):
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and getattr(engine, "amp", False):
            scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)


def _unwrapped(obj):
    """The module inside a DataParallel / DistributedDataParallel wrapper, so checkpoints carry plain names."""
    return obj.module if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else obj


def iterations_per_epoch(dataset, batch_size: int, reader=None) -> int:
    """Batches in one epoch: ``len(dataset)`` batches, or for a volume-slicing dataset (no length) the number
    of axial slices of its volumes, read from their headers by ``reader``."""
    try:
        samples = len(dataset)
    except TypeError:
        if reader is None or not hasattr(dataset, "data"):
            raise ValueError(f"cannot count the samples of {type(dataset).__name__}; pass the dataset reader") from None
        samples = sum(int(reader.image_shape(entry)[-1]) for entry in dataset.data)
    if samples == 0:
        raise ValueError("the training datalist is empty")
    return math.ceil(samples / batch_size)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The ``last_checkpoint_*.pt`` with the highest epoch in ``directory``, or ``None``."""
    pattern = re.compile(rf"{LAST_CHECKPOINT_PREFIX}_checkpoint_(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in Path(directory).glob("*.pt") if (m := pattern.search(p.name))]
    return max(found)[1] if found else None


class ResumeFromLatest:
    """At start, restore the engine and ``objects`` (names -> objects with ``load_state_dict``) from the newest
    resume checkpoint; the engine itself is stored under ``"trainer"``.

    Pair it with :class:`SaveForResume`, which writes that checkpoint atomically after every epoch. A run killed
    mid-epoch restarts from the last complete epoch with the same epoch count, optimizer and scheduler state.
    """

    def __init__(self, directory: str | Path, objects: dict, map_location: str | torch.device = "cpu"):
        self.directory, self.objects, self.map_location = Path(directory), objects, map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = latest_checkpoint(self.directory)
        if path is None:
            return
        state = torch.load(path, map_location=self.map_location, weights_only=True)
        objects = {**self.objects, "trainer": engine}
        missing = sorted(set(objects) - set(state))
        if missing:
            raise ValueError(f"{path}: resume checkpoint lacks {missing}; expected {sorted(objects)}")
        max_epochs = engine.state.max_epochs  # the configured length wins over the checkpoint's
        for name, obj in objects.items():
            _unwrapped(obj).load_state_dict(state[name])
        engine.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d, iteration %d", path, engine.state.epoch, engine.state.iteration)


class SaveForResume:
    """After every epoch, write the engine and ``objects`` to ``directory/last_checkpoint_<epoch>.pt`` atomically;
    keep only the newest."""

    def __init__(self, directory: str | Path, objects: dict):
        self.directory, self.objects = Path(directory), objects

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._register_last)

    def _register_last(self, engine: Engine) -> None:
        """Registered when the run starts, the save follows every epoch handler (scheduler, validation, ...)."""
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{LAST_CHECKPOINT_PREFIX}_checkpoint_{engine.state.epoch}.pt"
        objects = {**self.objects, "trainer": engine}
        atomic_torch_save({name: _unwrapped(obj).state_dict() for name, obj in objects.items()}, path)
        for old in self.directory.glob(f"{LAST_CHECKPOINT_PREFIX}_checkpoint_*.pt"):
            if old != path:
                old.unlink()


def atomic_torch_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: readers never see a partial file."""
    from ..io.atomic import atomic_path

    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
