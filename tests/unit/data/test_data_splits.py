"""Deterministic splits and split files."""

from __future__ import annotations

import json

import pytest
from miniature_layouts import write_busi

from common.data import SplitFileError, fraction_split, get_dataset, read_splits, write_splits


def test_fraction_split_sizes_and_determinism():
    ids = [f"img{i:04d}" for i in range(10015)]
    split = fraction_split(ids, (0.7, 0.1, 0.2), seed=42)
    assert [len(split[s]) for s in ("train", "validation", "test")] == [7011, 1002, 2002]
    assert set(split["train"]) | set(split["validation"]) | set(split["test"]) == set(ids)
    assert not set(split["train"]) & set(split["test"])
    assert fraction_split(list(reversed(ids)), (0.7, 0.1, 0.2), seed=42) == split  # order of discovery does not matter
    assert fraction_split(ids, (0.7, 0.1, 0.2), seed=1) != split
    assert [len(v) for v in fraction_split([f"p{i}" for i in range(200)], (0.4, 0.1, 0.5)).values()] == [80, 20, 100]
    with pytest.raises(ValueError, match="summing to 1"):
        fraction_split(ids, (0.7, 0.1, 0.1))


def test_split_file_round_trip_and_use(tmp_path):
    root = write_busi(tmp_path / "data", counts={"benign": 5, "normal": 3})
    reader = get_dataset("busi")
    splits = {"train": ["benign (1)", "benign (2)"], "validation": ["normal (1)"], "test": ["benign (5)"]}
    path = write_splits(tmp_path / "splits" / "busi.json", splits, dataset="busi")
    assert [p.name for p in path.parent.iterdir()] == ["busi.json"]  # no temporary file left behind
    assert json.loads(path.read_text())["dataset"] == "busi" and read_splits(path, "busi") == splits
    lists = reader.datalists(root, splits=path)
    assert [e["case"] for e in lists["train"]] == ["benign (1)", "benign (2)"] and len(lists["test"]) == 1

    with pytest.raises(SplitFileError, match="for dataset 'busi', not 'ph2'"):
        read_splits(path, "ph2")
    missing = write_splits(
        tmp_path / "missing.json", {"train": ["benign (9)"], "validation": [], "test": []}, dataset="busi"
    )
    with pytest.raises(SplitFileError, match=r"missing.json: cases not found in .*: benign \(9\)"):
        reader.datalists(root, splits=missing)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SplitFileError, match="broken.json: not a readable JSON split file"):
        read_splits(tmp_path / "broken.json")
