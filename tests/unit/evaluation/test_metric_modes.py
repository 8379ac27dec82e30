"""The two metric modes against independent computations: ``paper`` (TransUNet's per-case rule via medpy; the
authors' MONAI ``DiceMetric`` usage) and ``clinical`` (medpy's HD95 in mm), on synthetic volumes with a missed
organ, a class absent from the truth, a class absent from both, and anisotropic spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from medpy.metric import binary as medpy_binary
from monai.data import MetaTensor
from monai.metrics import DiceMetric

from common.evaluation.case_scores import image_foreground_scores, volume_scores
from common.evaluation.case_tables import MEAN_ROW, excluded_pairs, read_csv, summarize
from common.evaluation.comparison import format_comparison
from common.evaluation.handlers import CaseMetricsWriter, CaseScoringError
from common.evaluation.published import PublishedRow

CLASSES = ["a", "b", "c", "d"]
SPACING = (2.5, 0.7, 0.9)


def blob(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def synthetic_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Three (case, prediction, label) volumes [D, H, W] with the edge cases in different cases:
    case0: all classes found but c, which is absent from the truth and predicted (a false positive);
    case1: b missed entirely (in the truth, not predicted); d absent from both;
    case2: everything present and overlapping, with stray voxels."""
    shape = (6, 20, 18)
    rng = np.random.default_rng(11)
    cases = []
    for index in range(3):
        label = np.zeros(shape, np.int64)
        prediction = np.zeros(shape, np.int64)
        for value, centre in zip((1, 2, 3, 4), ((2, 5, 5), (3, 14, 5), (2, 5, 13), (3, 14, 13))):
            truth = blob(shape, centre, 3.2)
            guess = blob(shape, np.add(centre, rng.integers(-1, 2, 3)), 3.0)
            label[truth] = value
            prediction[guess] = value
        if index == 0:
            label[label == 3] = 0  # c absent from the truth, still predicted
        if index == 1:
            prediction[prediction == 2] = 0  # b missed
            label[label == 4], prediction[prediction == 4] = 0, 0  # d absent from both
        if index == 2:
            prediction[0, 0, :3] = 1  # stray voxels far away
        cases.append((f"case{index}", prediction, label))
    return cases


def transunet_percase(prediction: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """TransUNet's utils.calculate_metric_percase, written from its rule, with medpy doing the measuring."""
    if prediction.sum() > 0 and truth.sum() > 0:
        return medpy_binary.dc(prediction, truth), medpy_binary.hd95(prediction, truth)
    if prediction.sum() > 0:
        return 1.0, 0.0
    return 0.0, 0.0


def test_paper_mode_synapse_is_transunets_rule_averaged_over_all_cases():
    cases = synthetic_cases()
    rows = [r for case, p, t in cases for r in volume_scores(case, p, t, CLASSES, SPACING, paper_rule="transunet")]
    expected = np.array([[transunet_percase(p == k, t == k) for k in range(1, 5)] for _, p, t in cases])
    got = np.array(
        [[(r["paper_dice"], r["paper_hd95_vox"]) for r in rows if r["case"] == case] for case, _, _ in cases]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert tuple(got[0, 2]) == (1.0, 0.0) and tuple(got[1, 1]) == (0.0, 0.0) and tuple(got[1, 3]) == (0.0, 0.0)
    mean = summarize(rows)[-1]
    # TransUNet: per class over all cases (no case dropped), then over the classes
    assert mean["paper_dice"] == pytest.approx(expected[..., 0].mean(0).mean(), rel=1e-12)
    assert mean["paper_hd95_vox"] == pytest.approx(expected[..., 1].mean(0).mean(), rel=1e-12)
    assert excluded_pairs(rows)["paper_dice"] == 0 and excluded_pairs(rows)["paper_hd95_vox"] == 0


def test_clinical_mode_is_medpys_hd95_in_mm_with_undefined_pairs_excluded_and_counted():
    cases = synthetic_cases()
    rows = [r for case, p, t in cases for r in volume_scores(case, p, t, CLASSES, SPACING, paper_rule="transunet")]
    for case, prediction, truth in cases:
        for k, name in enumerate(CLASSES, start=1):
            (row,) = [r for r in rows if r["case"] == case and r["class"] == name]
            p, t = prediction == k, truth == k
            if t.any() and p.any():
                assert row["hd95_mm"] == pytest.approx(medpy_binary.hd95(p, t, voxelspacing=SPACING), rel=1e-9)
                assert row["hd95_vox"] == pytest.approx(medpy_binary.hd95(p, t), rel=1e-9)
                assert row["dice"] == pytest.approx(medpy_binary.dc(p, t), rel=1e-12)
            else:
                assert math.isnan(row["hd95_mm"]) and math.isnan(row["hd95_vox"])
                assert row["dice"] == 0.0 if t.any() else math.isnan(row["dice"])  # a miss scores 0; no truth: NaN
    # excluded: c in case0 (no truth), b in case1 (missed: HD95 only), d in case1 (absent from both)
    assert excluded_pairs(rows) == {"paper_dice": 0, "paper_hd95_vox": 0, "dice": 2, "hd95_mm": 3, "hd95_vox": 3}
    # without geometry the mm column is NaN, never voxels
    no_geometry = volume_scores("x", cases[2][1], cases[2][2], CLASSES)
    assert all(math.isnan(r["hd95_mm"]) for r in no_geometry) and not math.isnan(no_geometry[0]["hd95_vox"])


def test_paper_mode_elsewhere_is_the_authors_monai_dicemetric_usage_per_class_first():
    """val.py: DiceMetric(include_background=False, reduction="mean_batch", get_not_nans=True) per batch, an
    AverageMeter weighted by not_nans per class, then the mean over classes (test_model.py)."""
    cases = synthetic_cases()
    rows = [r for case, p, t in cases for r in volume_scores(case, p, t, CLASSES, SPACING)]
    metric = DiceMetric(include_background=False, reduction="mean_batch", get_not_nans=True, num_classes=5)
    total, count = np.zeros(4), np.zeros(4)
    for _, prediction, truth in cases:  # one volume per batch, as their volumetric loader
        metric.reset()
        metric(y_pred=torch.from_numpy(prediction)[None, None], y=torch.from_numpy(truth)[None, None])
        dices, not_nans = metric.aggregate()
        total += dices.numpy() * not_nans.numpy()
        count += not_nans.numpy()
    per_class = np.where(count > 0, total / np.maximum(count, 1), total)
    summary = summarize(rows)
    assert [s["paper_dice"] for s in summary[:-1]] == pytest.approx(per_class.tolist(), rel=1e-6)
    assert summary[-1]["paper_dice"] == pytest.approx(per_class.mean(), rel=1e-6)


def test_paper_mode_2d_matches_dicemetric_over_batches_of_images():
    rng = np.random.default_rng(2)
    truths = [blob((24, 20), (12, 10), r) for r in (5, 7, 0.1)] + [np.zeros((24, 20), bool)]
    predictions = [blob((24, 20), (12 + rng.integers(-2, 3), 10), 6) for _ in truths]
    rows = [r for i, (p, t) in enumerate(zip(predictions, truths)) for r in image_foreground_scores(str(i), p, t)]
    metric = DiceMetric(include_background=False, reduction="mean_batch", get_not_nans=True, num_classes=2)
    metric(
        y_pred=torch.as_tensor(np.stack(predictions)[:, None].astype(np.int64)),
        y=torch.as_tensor(np.stack(truths)[:, None].astype(np.int64)),
    )
    dices, not_nans = metric.aggregate()
    assert int(not_nans) == 3 == len(rows) - excluded_pairs(rows)["paper_dice"]
    assert summarize(rows)[-1]["paper_dice"] == pytest.approx(float(dices), rel=1e-6)


def test_comparison_sets_paper_mode_beside_the_published_row_and_clinical_apart():
    published = PublishedRow(85.32, 12.41, {"spleen": 92.96, "liver": 96.32})
    summary = [
        {"class": "spleen", "paper_dice": 0.9, "paper_hd95_vox": 4.0, "dice": 0.91, "hd95_mm": 5.0, "hd95_vox": 3.0},
        {
            "class": MEAN_ROW,
            "paper_dice": 0.85,
            "paper_hd95_vox": 13.41,
            "dice": 0.86,
            "hd95_mm": 20.0,
            "hd95_vox": 11.0,
        },
    ]
    text = format_comparison(summary, published, "ours", {"paper_dice": 0, "dice": 1, "hd95_mm": 3})
    lines = text.splitlines()
    assert lines[0].split() == ["ours", "paper-mode", "published", "paper-mode", "-", "published", "ours", "clinical"]
    table = {line[:13].strip(): line[13:].split() for line in lines[1:-1]}
    assert table["spleen Dice"] == ["90.00", "92.96", "-2.96", "91.00"]
    assert table["liver Dice"] == ["-", "96.32", "-", "-"]
    assert table["mean Dice"] == ["85.00", "85.32", "-0.32", "86.00"]
    assert table["HD95 (voxels)"] == ["13.41", "12.41", "+1.00", "11.00"]
    assert table["HD95 (mm)"] == ["-", "-", "-", "20.00"]  # never compared with the published voxels
    assert lines[-1] == "(case, class) pairs excluded from the means: paper_dice 0, dice 1, hd95_mm 3"
    assert len({len(line) for line in lines[:-1]}) == 1


def _run_writer(tmp_path, items, **options) -> CaseMetricsWriter:
    writer = CaseMetricsWriter(
        tmp_path, CLASSES, "volume", published={"mean_dice": 85.32, "hd95": 12.41}, paper_rule="transunet", **options
    )
    engine = Engine(lambda engine, batch: batch)
    writer.attach(engine)
    engine.run(items, max_epochs=1)
    return writer


def _item(case: str, prediction: np.ndarray, truth: np.ndarray, filename: str) -> dict:
    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    label = MetaTensor(torch.from_numpy(truth)[None], affine=affine, meta={"filename_or_obj": filename})
    return {"case": case, "pred": torch.from_numpy(prediction)[None], "label": label}


def test_writer_says_how_the_checkpoint_was_selected_and_gives_no_mm_without_geometry(tmp_path, capsys):
    items = [[_item(c, p, t, f"/data/test_vol_h5/{c}.npy.h5")] for c, p, t in synthetic_cases()]
    writer = _run_writer(tmp_path, items, selection="checkpoint selected on the test set (authors' protocol)")
    assert all(math.isnan(r["hd95_mm"]) for r in writer.rows)  # .h5: identity affine, no geometry
    printed = capsys.readouterr().out
    assert "checkpoint selected on the test set (authors' protocol)" in printed
    assert "pairs excluded from the means" in printed
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert summary[0].endswith("checkpoint_selection") and summary[1].endswith("(authors' protocol)")
    nifti = _run_writer(tmp_path / "nii", [[_item(c, p, t, f"/data/{c}.nii.gz")] for c, p, t in synthetic_cases()])
    assert not math.isnan(nifti.rows[0]["hd95_mm"])


def test_a_case_that_cannot_be_scored_fails_the_run_after_scoring_the_others(tmp_path):
    cases = synthetic_cases()
    bad = _item("broken", cases[0][1][:, :5], cases[0][2], "/data/broken.nii.gz")  # shapes differ
    items = [[bad]] + [[_item(c, p, t, f"/data/{c}.nii.gz")] for c, p, t in cases]
    with pytest.raises(CaseScoringError, match=r"1 case\(s\) could not be scored.*broken: case broken: prediction"):
        _run_writer(tmp_path, items)
    assert len({r["case"] for r in read_csv(tmp_path / "cases.csv")}) == 3  # the others were scored and written


def test_selection_metric_averages_per_class_first():
    """Class a in both cases (Dice 1 and 2/3), class b in one case (Dice 0): per class first gives
    (5/6 + 0) / 2 = 5/12, where the mean over the three (case, class) pairs would give 5/9."""
    from common.evaluation.handlers import ClassMeanDice

    def one_hot(label_map: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.from_numpy(label_map), 3).permute(2, 0, 1).float()

    truth1, pred1 = np.zeros((4, 4), np.int64), np.zeros((4, 4), np.int64)
    truth1[:2, :2] = pred1[:2, :2] = 1  # a: Dice 1; b absent from the truth (NaN, ignored)
    truth2, pred2 = np.zeros((4, 4), np.int64), np.zeros((4, 4), np.int64)
    truth2[0, :2], pred2[0, :1] = 1, 1  # a: 2 * 1 / (2 + 1)
    truth2[3, 3] = 2  # b missed: Dice 0
    metric = ClassMeanDice()
    metric.reset()
    metric.update(([one_hot(pred1), one_hot(pred2)], [one_hot(truth1), one_hot(truth2)]))
    assert metric.compute() == pytest.approx(((1 + 2 / 3) / 2 + 0) / 2)
