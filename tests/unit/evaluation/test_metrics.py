"""Metrics: Dice and HD95 against brute force, skip rules, summaries, CSV tables, the paper comparison."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from common.evaluation.case_scores import image_foreground_scores, multilabel_scores, volume_scores
from common.evaluation.case_tables import MEAN_ROW, read_csv, summarize
from common.evaluation.comparison import format_comparison
from common.evaluation.metrics import hd95
from common.evaluation.published import PUBLISHED_RESULTS, PublishedRow
from common.io.tables import write_csv

nan = math.nan


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (or outside the array)."""
    padded = np.pad(mask, 1)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    all_in = np.ones_like(mask)
    for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
        all_in &= np.roll(padded, step, axis=axis)[inner]
    return mask & ~all_in


def brute_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Pooled 95th percentile of all nearest-surface distances, by comparing every pair of surface voxels."""
    pa = np.argwhere(brute_surface(a)) * np.asarray(spacing, dtype=float)
    pb = np.argwhere(brute_surface(b)) * np.asarray(spacing, dtype=float)
    pairwise = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([pairwise.min(1), pairwise.min(0)]), 95))


def random_blob(rng: np.random.Generator, shape: tuple[int, ...], fill: float) -> np.ndarray:
    mask = rng.random(shape) < fill
    mask[tuple(rng.integers(0, s) for s in shape)] = True  # never empty
    return mask


@pytest.mark.parametrize("shape", [(9, 11), (5, 7, 8)])
def test_hd95_matches_brute_force(shape):
    rng = np.random.default_rng(len(shape))
    spacing = (2.5, 0.7, 0.9)[-len(shape) :]
    for _ in range(4):
        a, b = random_blob(rng, shape, 0.3), random_blob(rng, shape, 0.15)
        assert hd95(a, b) == pytest.approx(brute_hd95(a, b, (1.0,) * len(shape)), rel=1e-9)
        assert hd95(a, b, spacing) == pytest.approx(brute_hd95(a, b, spacing), rel=1e-9)


def test_hd95_is_exact_for_masks_touching_the_array_edge():
    rng = np.random.default_rng(7)
    a, b = random_blob(rng, (6, 6, 6), 0.5), random_blob(rng, (6, 6, 6), 0.2)
    padded_a, padded_b = np.pad(a, 3), np.pad(b, 3)
    assert hd95(a, b, (3.0, 1.0, 1.0)) == pytest.approx(hd95(padded_a, padded_b, (3.0, 1.0, 1.0)), rel=1e-12)
    with pytest.raises(ValueError, match="non-empty"):
        hd95(a, np.zeros_like(b))
    with pytest.raises(ValueError, match="3-D mask"):
        hd95(a, b, (1.0, 1.0))


def test_volume_scores_dice_and_hd95_per_class_with_skip_rules():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 3, size=(4, 9, 10))  # classes 1 and 2 present, 3 absent
    prediction = np.where(rng.random(label.shape) < 0.8, label, rng.integers(0, 3, size=label.shape))
    prediction[prediction == 2] = 3  # class 2 missed entirely; class 3 predicted but absent from the label
    spacing = (3.0, 0.8, 0.8)
    rows = volume_scores("case01", torch.from_numpy(prediction), label.astype(np.float32), ["a", "b", "c"], spacing)
    assert [r["class"] for r in rows] == ["a", "b", "c"] and all(r["case"] == "case01" for r in rows)
    a, b, c = rows
    p1, g1 = prediction == 1, label == 1
    assert a["dice"] == pytest.approx(2 * (p1 & g1).sum() / (p1.sum() + g1.sum()), rel=1e-12)
    assert a["hd95_vox"] == pytest.approx(brute_hd95(p1, g1, (1, 1, 1)), rel=1e-9)
    assert a["hd95_mm"] == pytest.approx(brute_hd95(p1, g1, spacing), rel=1e-9)
    # Present in the ground truth, absent from the prediction: Dice 0, HD95 undefined (NaN).
    assert b["dice"] == 0.0 and math.isnan(b["hd95_mm"]) and math.isnan(b["hd95_vox"])
    # Absent from the ground truth: skipped whatever the prediction says.
    assert all(math.isnan(c[k]) for k in ("dice", "hd95_mm", "hd95_vox"))
    no_spacing = volume_scores("case01", prediction, label, ["a", "b", "c"])
    assert math.isnan(no_spacing[0]["hd95_mm"]) and no_spacing[0]["hd95_vox"] == a["hd95_vox"]


def test_volume_scores_refuse_bad_input_naming_the_case():
    label = np.zeros((2, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"case7: prediction \(2, 4, 5\) and label \(2, 4, 4\)"):
        volume_scores("case7", np.zeros((2, 4, 5)), label, ["a"])
    with pytest.raises(ValueError, match=r"case7: prediction holds values 0 \.\. 4; expected integer labels 0 \.\. 1"):
        volume_scores("case7", np.where(np.arange(32).reshape(2, 4, 4) == 5, 4, 0), label, ["a"])
    with pytest.raises(ValueError, match=r"case7: spacing \(1.0, 1.0\) does not give one value per axis"):
        volume_scores("case7", label, label, ["a"], (1.0, 1.0))
    with pytest.raises(ValueError, match="case7: label holds non-integer values"):
        volume_scores("case7", label, np.full((2, 4, 4), 0.5), ["a"])


def test_image_foreground_dice_counts_only_images_with_a_mask():
    label = np.zeros((6, 6), dtype=np.uint8)
    label[1:4, 1:4] = 255  # 9 pixels
    prediction = np.zeros((6, 6), dtype=np.uint8)
    prediction[2:5, 2:5] = 1  # 9 pixels, 4 shared
    (row,) = image_foreground_scores("img1", prediction, label)
    assert row == {
        "case": "img1",
        "class": "foreground",
        "paper_dice": pytest.approx(8 / 18),
        "dice": pytest.approx(8 / 18),
    }
    (empty,) = image_foreground_scores("img2", prediction, np.zeros_like(label))
    assert math.isnan(empty["dice"])
    summary = summarize([row, empty])
    assert summary[0]["cases"] == 1 and summary[0]["dice"] == pytest.approx(8 / 18)


def test_multilabel_dice_and_jaccard_per_channel():
    label = np.zeros((3, 4, 4), dtype=bool)
    prediction = np.zeros((3, 4, 4), dtype=bool)
    label[0, :2] = True  # 8 pixels
    prediction[0, 1:3] = True  # 8 pixels, 4 shared, union 12
    label[1, :, 0] = True  # overlaps channel 0: channels are independent
    prediction[1] = True
    prediction[2, 0, 0] = True  # channel 2 absent from the label: skipped
    rows = multilabel_scores("case9_day1_slice_0001", prediction, label, ["large_bowel", "small_bowel", "stomach"])
    assert rows[0]["dice"] == pytest.approx(0.5) and rows[0]["jaccard"] == pytest.approx(4 / 12)
    assert rows[1]["dice"] == pytest.approx(8 / 20) and rows[1]["jaccard"] == pytest.approx(4 / 16)
    assert math.isnan(rows[2]["dice"]) and math.isnan(rows[2]["jaccard"])
    with pytest.raises(ValueError, match="K = 2 channels"):
        multilabel_scores("x", prediction, label, ["a", "b"])


def test_summarize_means_over_cases_then_over_classes():
    rows = [
        {"case": "1", "class": "a", "dice": 0.8, "hd95_vox": 2.0},
        {"case": "2", "class": "a", "dice": 0.6, "hd95_vox": nan},
        {"case": "1", "class": "b", "dice": nan, "hd95_vox": nan},
        {"case": "2", "class": "b", "dice": 0.4, "hd95_vox": 6.0},
        {"case": "1", "class": "c", "dice": nan, "hd95_vox": nan},
    ]
    a, b, c, mean = summarize(rows)
    assert a == {"class": "a", "cases": 2, "dice": pytest.approx(0.7), "hd95_vox": 2.0}
    assert b == {"class": "b", "cases": 1, "dice": 0.4, "hd95_vox": 6.0}
    assert c["cases"] == 0 and math.isnan(c["dice"])
    assert mean == {"class": MEAN_ROW, "cases": 2, "dice": pytest.approx(0.55), "hd95_vox": pytest.approx(4.0)}


def test_csv_round_trip_is_atomic_and_keeps_nan(tmp_path):
    rows = [
        {"case": "0001", "class": "right kidney", "dice": 0.123456789012345, "hd95_mm": nan, "hd95_vox": 3.0},
        {"case": "0002", "class": "liver", "dice": 1.0, "hd95_mm": 2.5, "hd95_vox": 1.25},
    ]
    path = write_csv(tmp_path / "out" / "per_case.csv", rows)
    summary_path = write_csv(tmp_path / "out" / "summary.csv", summarize(rows))
    assert sorted(p.name for p in path.parent.iterdir()) == ["per_case.csv", "summary.csv"]
    back = read_csv(path)
    assert back[0]["case"] == "0001" and back[0]["dice"] == rows[0]["dice"] and math.isnan(back[0]["hd95_mm"])
    assert back[1] == rows[1]
    summary = read_csv(summary_path)
    assert summary[-1]["class"] == MEAN_ROW and summary[-1]["cases"] == 2 and isinstance(summary[-1]["cases"], int)
    path.write_text("case,class,dice\n0001,liver,oops\n")
    with pytest.raises(ValueError, match=r"per_case.csv, line 2, column 'dice': expected a number, found 'oops'"):
        read_csv(path)


def test_published_rows():
    published = PUBLISHED_RESULTS["synapse"]["PVT-GDLA"]
    assert published.mean_dice == 85.32 and published.class_dice["pancreas"] == 70.86
    assert sum(published.class_dice.values()) / 8 == pytest.approx(published.mean_dice, abs=0.01)
    ours = [{"class": "foreground", "paper_dice": 0.81, "dice": 0.81}, {"class": MEAN_ROW, "paper_dice": 0.81}]
    busi = format_comparison(ours, PublishedRow(80.54))
    assert "+0.46" in busi and "foreground" in busi
