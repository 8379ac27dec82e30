"""UW-Madison GI Tract: 16-bit slices, run-length labels as three overlapping channels, split by patient."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from miniature_layouts import disc, write_uwmgi

from common.data import get_dataset
from common.data.uwmgi import decode_rle, encode_rle
from common.io.images import read_image_2d


def test_run_length_round_trip_and_convention():
    mask = np.zeros((4, 5), np.uint8)
    mask[0, 1:4] = 1  # flat positions 1-3 -> 1-based start 2, length 3
    mask[3, 4] = 1  # last pixel -> start 20
    assert encode_rle(mask) == "2 3 20 1"
    np.testing.assert_array_equal(decode_rle("2 3 20 1", 4, 5), mask)
    assert encode_rle(np.zeros((3, 3))) == "" and decode_rle("", 3, 3).sum() == 0
    shape = (24, 20)
    blob = disc(shape, (10, 7), 5)
    np.testing.assert_array_equal(decode_rle(encode_rle(blob), *shape), blob)
    with pytest.raises(ValueError, match="outside a 4 x 5 image"):
        decode_rle("19 3", 4, 5)


def test_entries_split_by_case_and_labels(tmp_path):
    root = write_uwmgi(tmp_path, n_cases=10, days_per_case=2, slices_per_day=3)
    reader = get_dataset("uwmgi")
    lists = reader.datalists(root)
    cases = {name: {e["case"] for e in entries} for name, entries in lists.items()}
    assert [len(cases[s]) for s in ("train", "validation", "test")] == [8, 1, 1]
    assert not (
        cases["train"] & cases["validation"] or cases["train"] & cases["test"] or cases["validation"] & cases["test"]
    )
    assert [len(lists[s]) for s in ("train", "validation", "test")] == [
        48,
        6,
        6,
    ]  # every day and slice of a case together

    entry = next(e for e in lists["train"] if e["slice"] == 2)
    assert entry["id"] == f"{entry['day']}_slice_0002" and (entry["height"], entry["width"]) == (24, 20)
    assert entry["pixel_spacing"] == [1.5, 1.5]
    image = read_image_2d(entry["image"], channels=1)
    assert image.dtype == np.uint16 and image.shape == (1, 24, 20) and image.max() > 255  # 16-bit kept
    label = reader.read_label(entry)
    assert label.shape == (3, 24, 20) and (label[0] & label[1]).any()  # large and small bowel overlap

    sampled = reader.check(root, max_files=40)
    assert (
        sampled.ok and (sampled.files_read, sampled.files_total) == (40, 60) and "a random sample" in sampled.format()
    )
    every = reader.check(root, max_files=None)
    assert every.ok and every.value_counts == {0: 60, 1: 60} and "all 60 label files" in every.format()


def test_csv_and_image_problems(tmp_path):
    root = write_uwmgi(tmp_path, n_cases=2, days_per_case=1, slices_per_day=2)
    rows = list(csv.reader((root / "train.csv").open()))
    rows[1][2] = "470 20"  # beyond 24 x 20 = 480 pixels
    rows.append(["case999_day0_slice_0001", "stomach", ""])
    with (root / "train.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    report = get_dataset("uwmgi").check(root)
    text = "\n".join(report.problems)
    assert "1 ids have no slice image, e.g. case999_day0_slice_0001" in text
    assert (
        f"{root / 'train.csv'} rows for {rows[1][0]}, class large_bowel: run 470 20 falls outside a 24 x 20 image"
        in text
    )
