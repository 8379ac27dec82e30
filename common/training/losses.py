"""Training losses: Boundary Difference over Union, Dice + cross-entropy, and a deep-supervision sum.

Shapes: network output ``[B, K, H, W]`` (logits unless stated otherwise); target either a label map
``[B, 1, H, W]`` / ``[B, H, W]`` of class indices (integer or integral float, as MONAI loaders give them)
or a one-hot ``[B, K, H, W]``. The multi-label (sigmoid) option of :class:`DiceCrossEntropyLoss` takes
``K`` binary target channels instead. Every class is an ``nn.Module`` built from keyword arguments, so a
MONAI bundle config can name it, e.g.::

    {"_target_": "common.training.DeepSupervisionLoss",
     "loss": {"_target_": "common.training.BoundaryDoULoss"}}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.utils import convert_to_tensor

BOUNDARY_DOU_SMOOTH = 1e-5
BOUNDARY_DOU_ALPHA_MAX = 0.8


def _plain(x: torch.Tensor) -> torch.Tensor:
    """Drop MONAI metadata (MetaTensor -> Tensor), keeping the autograd graph."""
    return convert_to_tensor(x, track_meta=False)


def class_indices(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices ``[B, H, W]`` (int64) from a label map (``[B, 1, H, W]`` or ``[B, H, W]``) or a one-hot.

    Raises ``ValueError`` when the target has another shape, labels outside ``0 .. K-1`` or non-integral
    values, or a "one-hot" that is not 0/1 with exactly one 1 per pixel.
    """
    target = _plain(target)
    if target.ndim == 4 and target.shape[1] == num_classes and num_classes > 1:
        not_binary = (target != 0) & (target != 1)
        if bool(not_binary.any() | (target.sum(dim=1) != 1).any()):
            raise ValueError(f"one-hot target {tuple(target.shape)}: expected 0/1 values with exactly one 1 per pixel")
        return target.argmax(dim=1)
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim != 3:
        raise ValueError(
            f"target {tuple(target.shape)}: expected a label map [B, 1, H, W] or [B, H, W], "
            f"or a one-hot [B, {num_classes}, H, W]"
        )
    bad = (target < 0) | (target >= num_classes)
    if target.is_floating_point():
        bad |= target != target.round()
    if bool(bad.any()):
        raise ValueError(
            f"label map {tuple(target.shape)}: expected integer class indices in 0 .. {num_classes - 1}, "
            f"found values in {target.min().item()} .. {target.max().item()}"
        )
    return target.long()


def _one_hot(indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices ``[B, H, W]`` -> float32 one-hot ``[B, K, H, W]``."""
    return F.one_hot(indices, num_classes).permute(0, 3, 1, 2).float()


def boundary_and_area_counts(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class boundary and area pixel counts ``([K], [K])`` of a binary ``[B, K, H, W]`` mask, summed over the batch.

    A boundary pixel is a target pixel whose cross neighbourhood (itself and its 4 neighbours, zero padding
    outside the image) is not all target.
    """
    mask = target > 0.5
    padded = F.pad(mask, (1, 1, 1, 1))
    interior = mask & padded[..., :-2, 1:-1] & padded[..., 2:, 1:-1] & padded[..., 1:-1, :-2] & padded[..., 1:-1, 2:]
    dims = (0, 2, 3)
    boundary = (mask & ~interior).sum(dim=dims).float()
    area = mask.sum(dim=dims).float()
    return boundary, area


class BoundaryDoULoss(nn.Module):
    """Boundary Difference over Union loss (Sun et al., MICCAI 2023), as in the PVT-GDLA authors' code.

    Per class ``c`` with probabilities ``p``, one-hot target ``y`` and ``s = smooth``:
    ``alpha = min(2 (1 - (C + s) / (S + s)) - 1, alpha_max)`` where ``C`` and ``S`` count the boundary and
    target pixels of ``c`` over the whole batch, and
    ``loss_c = (sum p^2 + sum y - 2 sum yp + s) / (sum p^2 + sum y - (1 + alpha) sum yp + s)``, sums over
    batch and space. Returns the mean of ``loss_c`` over all ``K`` classes, background included (a scalar).
    The arithmetic is float32 even under autocast.

    Args:
        softmax: apply softmax over channels to the input (logits); ``False`` when the input is
            already probabilities.
        smooth: the smoothing constant ``s``.
        alpha_max: the upper bound on ``alpha``.
    """

    def __init__(
        self,
        softmax: bool = True,
        smooth: float = BOUNDARY_DOU_SMOOTH,
        alpha_max: float = BOUNDARY_DOU_ALPHA_MAX,
    ):
        super().__init__()
        self.softmax = softmax
        self.smooth = smooth
        self.alpha_max = alpha_max

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input [B, K, H, W]``, ``target`` a label map or one-hot -> scalar loss."""
        input = _plain(input)
        if input.ndim != 4 or input.shape[1] < 2:
            raise ValueError(f"input {tuple(input.shape)}: expected [B, K, H, W] with K >= 2 classes")
        with torch.autocast(device_type=input.device.type, enabled=False):
            probs = input.float()
            if self.softmax:
                probs = probs.softmax(dim=1)
            y = _one_hot(class_indices(target.to(input.device), input.shape[1]), input.shape[1])
            if y.shape != probs.shape:
                raise ValueError(f"target {tuple(target.shape)} does not match input {tuple(input.shape)}")
            boundary, area = boundary_and_area_counts(y)
            s = self.smooth
            alpha = (2 * (1 - (boundary + s) / (area + s)) - 1).clamp(max=self.alpha_max)
            dims = (0, 2, 3)
            intersect = (probs * y).sum(dim=dims)
            y_sum = y.sum(dim=dims)
            z_sum = (probs * probs).sum(dim=dims)
            per_class = (z_sum + y_sum - 2 * intersect + s) / (z_sum + y_sum - (1 + alpha) * intersect + s)
            return per_class.mean()


class DiceCrossEntropyLoss(nn.Module):
    """``lambda_dice * Dice loss + lambda_ce * cross-entropy`` for single-label or multi-label segmentation.

    Single-label (``sigmoid=False``): softmax Dice over one-hot classes plus ``nn.CrossEntropyLoss`` on
    class indices; the target is any label map or one-hot :func:`class_indices` accepts.
    Multi-label (``sigmoid=True``, e.g. the three overlapping UW-Madison channels): sigmoid Dice per channel
    plus ``nn.BCEWithLogitsLoss``; the target is ``[B, K, H, W]`` with 0/1 values.

    The Dice defaults follow the TransUNet / Swin-UNet trainers the MLLA-UNet recipe comes from: squared
    predictions in the denominator, sums over the whole batch, all classes including background,
    smoothing ``1e-5`` in numerator and denominator (MONAI ``DiceLoss`` options of the same names).

    Args:
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        sigmoid: multi-label mode (sigmoid Dice + binary cross-entropy).
        include_background: keep channel 0 in the Dice term.
        squared_pred: square the predictions and targets in the Dice denominator.
        batch: sum Dice statistics over the batch before dividing.
    """

    def __init__(
        self,
        lambda_dice: float = 0.5,
        lambda_ce: float = 0.5,
        sigmoid: bool = False,
        include_background: bool = True,
        squared_pred: bool = True,
        batch: bool = True,
    ):
        super().__init__()
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError(f"loss weights must be >= 0, got lambda_dice={lambda_dice}, lambda_ce={lambda_ce}")
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce
        self.sigmoid = sigmoid
        self.dice = DiceLoss(
            include_background=include_background,
            sigmoid=sigmoid,
            softmax=not sigmoid,
            squared_pred=squared_pred,
            batch=batch,
        )
        self.cross_entropy = nn.BCEWithLogitsLoss() if sigmoid else nn.CrossEntropyLoss()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input [B, K, H, W]`` logits, ``target`` as described in the class docstring -> scalar loss."""
        input = _plain(input)
        target = _plain(target).to(input.device)
        if input.ndim != 4:
            raise ValueError(f"input {tuple(input.shape)}: expected [B, K, H, W] logits")
        if self.sigmoid:
            if target.shape != input.shape:
                raise ValueError(
                    f"multi-label target {tuple(target.shape)}: "
                    f"expected one 0/1 channel per output channel, {tuple(input.shape)}"
                )
            y = target.float()
            ce = self.cross_entropy(input.float(), y)
        else:
            indices = class_indices(target, input.shape[1])
            y = _one_hot(indices, input.shape[1])
            ce = self.cross_entropy(input.float(), indices)
        return self.lambda_dice * self.dice(input.float(), y) + self.lambda_ce * ce


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of one loss over every output of a deep-supervised network.

    ``outputs`` is the list ``[out4, out3, out2, out1]`` (each ``[B, K, H, W]`` at the target resolution)
    or a single tensor; every output is compared with the same ``target``. With ``weights=None`` every
    output has weight 1, the PVT-GDLA recipe (an unweighted sum).

    Args:
        loss: the per-output loss, e.g. :class:`BoundaryDoULoss`.
        weights: one weight per output, in the order of ``outputs``.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Scalar ``sum_i weights[i] * loss(outputs[i], target)``."""
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        if len(outputs) == 0:
            raise ValueError("deep-supervision loss got an empty list of network outputs")
        weights = [1.0] * len(outputs) if self.weights is None else self.weights
        if len(weights) != len(outputs):
            raise ValueError(f"{len(outputs)} network outputs but {len(weights)} deep-supervision weights")
        return sum(w * self.loss(out, target) for w, out in zip(weights, outputs))
