"""Losses: Boundary DoU against hand-counted examples, Dice + CE against the formulas, deep-supervision sums."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from common.training.losses import BoundaryDoULoss, DeepSupervisionLoss, DiceCrossEntropyLoss, class_indices

S = 1e-5

# Class 1 fills the top-left 3x3 block of a 4x4 image; class 0 is the L-shaped rest.
LABEL_4X4 = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
# Foreground probabilities chosen by hand (background = 1 - foreground).
P1_4X4 = torch.tensor(
    [[0.9, 0.8, 0.7, 0.2], [0.6, 0.9, 0.5, 0.1], [0.7, 0.8, 0.4, 0.3], [0.2, 0.1, 0.0, 0.3]], dtype=torch.float64
)


def class_term(p: torch.Tensor, y: torch.Tensor, boundary: int, area: int) -> float:
    """One class of the spec's formula with counts given by hand."""
    alpha = min(2 * (1 - (boundary + S) / (area + S)) - 1, 0.8)
    z, ys, i = float((p * p).sum()), float(y.sum()), float((p * y).sum())
    return (z + ys - 2 * i + S) / (z + ys - (1 + alpha) * i + S)


def probabilities(p1: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` foreground probabilities -> ``[B, 2, H, W]`` float32 class probabilities."""
    return torch.stack([1 - p1, p1], dim=1).float()


def test_boundary_dou_matches_hand_counts_on_one_image():
    # Class 1: 9 pixels; only the centre (1, 1) has all four neighbours in the class -> 8 boundary pixels.
    # Class 0: 7 pixels, all on the image edge (zero padding) -> all 7 are boundary.
    y1 = LABEL_4X4.double()
    expected = (class_term(1 - P1_4X4, 1 - y1, boundary=7, area=7) + class_term(P1_4X4, y1, boundary=8, area=9)) / 2
    loss = BoundaryDoULoss(softmax=False)(probabilities(P1_4X4[None]), LABEL_4X4[None, None])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_boundary_dou_uses_the_cross_neighbourhood_not_the_square():
    # 5x5 all class 1 except a background hole at (1, 1). Of the 8 non-edge class-1 pixels, (1, 2) and (2, 1)
    # touch the hole -> 6 interior, 18 boundary out of 24. (2, 2) touches it only diagonally: still interior.
    label = torch.ones(5, 5, dtype=torch.long)
    label[1, 1] = 0
    p1 = torch.linspace(0.05, 0.95, 25, dtype=torch.float64).reshape(5, 5)
    y1 = label.double()
    expected = (class_term(1 - p1, 1 - y1, boundary=1, area=1) + class_term(p1, y1, boundary=18, area=24)) / 2
    square = (class_term(1 - p1, 1 - y1, boundary=1, area=1) + class_term(p1, y1, boundary=19, area=24)) / 2
    loss = BoundaryDoULoss(softmax=False)(probabilities(p1[None]), label[None]).item()
    assert loss == pytest.approx(expected, rel=1e-6)
    assert loss != pytest.approx(square, rel=1e-4)


def test_boundary_dou_alpha_is_counted_over_the_whole_batch():
    # Second image is all background: 16 pixels of which the 12 on the edge are boundary.
    labels = torch.stack([LABEL_4X4, torch.zeros(4, 4, dtype=torch.long)])
    p1 = torch.stack([P1_4X4, torch.full((4, 4), 0.25, dtype=torch.float64)])
    y1 = labels.double()
    expected = (class_term(1 - p1, 1 - y1, boundary=7 + 12, area=7 + 16) + class_term(p1, y1, boundary=8, area=9)) / 2
    loss_fn = BoundaryDoULoss(softmax=False)
    loss = loss_fn(probabilities(p1), labels[:, None])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    per_image = [loss_fn(probabilities(p1[i : i + 1]), labels[i : i + 1, None]).item() for i in range(2)]
    assert loss.item() != pytest.approx(sum(per_image) / 2, rel=1e-3)


def test_boundary_dou_caps_alpha_and_scores_an_absent_class_one():
    # 40x40 all class 1: 1600 pixels, 156 on the edge -> alpha = 2 (1 - 156/1600) - 1 = 0.805, capped at 0.8.
    # Class 0 is absent (C = S = 0): its term is (sum p^2 + s) / (sum p^2 + s) = 1.
    labels = torch.ones(1, 1, 40, 40, dtype=torch.long)
    probs = torch.full((1, 2, 40, 40), 0.5)
    z, y, i = 1600 * 0.25, 1600.0, 1600 * 0.5
    capped = (z + y - 2 * i + S) / (z + y - 1.8 * i + S)
    uncapped = (z + y - 2 * i + S) / (z + y - (1 + 0.805) * i + S)
    loss = BoundaryDoULoss(softmax=False)(probs, labels).item()
    assert loss == pytest.approx((1 + capped) / 2, rel=1e-6)
    assert loss != pytest.approx((1 + uncapped) / 2, rel=1e-4)
    assert BoundaryDoULoss(softmax=False, alpha_max=1.0)(probs, labels).item() == pytest.approx(
        (1 + uncapped) / 2, rel=1e-6
    )


def test_boundary_dou_target_forms_and_logits_agree():
    probs = probabilities(P1_4X4[None])
    label = LABEL_4X4[None]
    expected = BoundaryDoULoss(softmax=False)(probs, label[:, None])
    logits = probs.log() + 3.0  # softmax(log p + c) = p
    one_hot = F.one_hot(label, 2).permute(0, 3, 1, 2)
    for target in (label, label[:, None], label[:, None].float(), one_hot, one_hot.float()):
        assert BoundaryDoULoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_boundary_dou_gradients_flow_and_autocast_keeps_float32():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    loss = BoundaryDoULoss()(logits, target)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = BoundaryDoULoss()(logits.detach().bfloat16(), target)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(loss.item(), rel=2e-2)


def test_bad_targets_are_refused_with_the_shapes():
    logits = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"0 \.\. 2, found values in 3 \.\. 3"):
        BoundaryDoULoss()(logits, torch.full((1, 1, 4, 4), 3))
    with pytest.raises(ValueError, match=r"integer class indices in 0 \.\. 2, found values in 0.5"):
        BoundaryDoULoss()(logits, torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 4\).*one-hot \[B, 3, H, W\]"):
        BoundaryDoULoss()(logits, torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="exactly one 1 per pixel"):
        class_indices(torch.zeros(1, 3, 4, 4), 3)
    with pytest.raises(ValueError, match="does not match"):
        BoundaryDoULoss()(logits, torch.zeros(1, 1, 4, 5, dtype=torch.long))


def test_deep_supervision_sums_the_parts():
    torch.manual_seed(1)
    outputs = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    target = torch.randint(0, 3, (2, 1, 8, 8))
    base = BoundaryDoULoss()
    parts = [base(out, target).item() for out in outputs]
    assert DeepSupervisionLoss(base)(outputs, target).item() == pytest.approx(sum(parts), rel=1e-6)
    weights = [0.1, 0.2, 0.3, 0.4]
    weighted = DeepSupervisionLoss(base, weights)(outputs, target).item()
    assert weighted == pytest.approx(sum(w * p for w, p in zip(weights, parts)), rel=1e-6)
    assert DeepSupervisionLoss(base)(outputs[-1], target).item() == pytest.approx(parts[-1], rel=1e-6)
    with pytest.raises(ValueError, match="4 network outputs but 2"):
        DeepSupervisionLoss(base, [1.0, 1.0])(outputs, target)


def test_losses_build_from_a_bundle_config():
    parser = ConfigParser(
        {
            "loss": {
                "_target_": "common.training.DeepSupervisionLoss",
                "loss": {"_target_": "common.training.DiceCrossEntropyLoss", "lambda_dice": 0.6, "lambda_ce": 0.4},
            },
            "bdou": {"_target_": "common.training.BoundaryDoULoss"},
        }
    )
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss.loss, DiceCrossEntropyLoss) and loss.loss.lambda_dice == 0.6
    assert isinstance(parser.get_parsed_content("bdou"), BoundaryDoULoss)


def soft_dice_loss(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TransUNet-style Dice loss: per class over the batch, squared denominators, mean over all classes."""
    dims = (0, 2, 3)
    score = (2 * (probs * y).sum(dims) + S) / ((probs * probs).sum(dims) + (y * y).sum(dims) + S)
    return 1 - score.mean()


def test_dice_ce_softmax_matches_the_formula():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    label = torch.randint(0, 3, (2, 6, 6))
    y = F.one_hot(label, 3).permute(0, 3, 1, 2).float()
    ce = -(logits.log_softmax(1) * y).sum(1).mean()
    expected = 0.4 * soft_dice_loss(logits.softmax(1), y) + 0.6 * ce
    loss_fn = DiceCrossEntropyLoss(lambda_dice=0.4, lambda_ce=0.6)
    loss = loss_fn(logits, label[:, None])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss_fn(logits, y).item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    summed = DeepSupervisionLoss(loss_fn)([logits, logits], label[:, None])
    assert summed.item() == pytest.approx(2 * loss.item(), rel=1e-6)


def test_dice_ce_sigmoid_treats_channels_independently():
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 6, 6)
    target = (torch.rand(2, 3, 6, 6) > 0.6).float()
    target[:, 2] = target[:, 1]  # overlapping channels are legal in multi-label mode
    p = logits.sigmoid()
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    expected = 0.5 * soft_dice_loss(p, target) + 0.5 * bce
    assert DiceCrossEntropyLoss(sigmoid=True)(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"multi-label target \(2, 1, 6, 6\)"):
        DiceCrossEntropyLoss(sigmoid=True)(logits, target[:, :1])
    with pytest.raises(ValueError, match=">= 0"):
        DiceCrossEntropyLoss(lambda_dice=-1.0)
