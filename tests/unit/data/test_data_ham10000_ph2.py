"""HAM10000 and PH2 layouts: counts, splits, duplicate folders, ignored roi folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from miniature_layouts import write_ham10000, write_ph2

from common.data import get_dataset


def test_ham10000_counts_split_and_duplicate_lowercase_copy(tmp_path):
    root = write_ham10000(tmp_path, n_images=10)
    shutil.copytree(root / "HAM10000_images_part_1", root / "ham10000_images_part_1")  # as in the Kaggle copy
    reader = get_dataset("ham10000")
    lists = reader.datalists(root)
    assert [len(lists[s]) for s in ("train", "validation", "test")] == [7, 1, 2]
    # the test set is the authors' published list (0024312 and 0024315 are on it), the rest split 8:1
    assert [e["case"] for e in lists["test"]] == ["ISIC_0024312", "ISIC_0024315"]
    ids = [e["case"] for s in lists.values() for e in s]
    assert len(ids) == len(set(ids)) == 10
    entry = lists["train"][0]
    assert entry["label"].endswith(f"HAM10000_segmentations_lesion_tschandl/{entry['case']}_segmentation.png")
    report = reader.check(root)
    assert report.ok and report.value_counts == {0: 10, 255: 10}
    assert "split: test = the authors' published list (1,015 images)" in report.format()


def test_published_lists_ship_whole():
    """The authors' lists as published: HAM10000 test 1,015 images; PH2 80/20/100, disjoint, equal to the
    seeded 40/10/50 split of their 200 ids with seed 42 (which the authors' lists turned out to be)."""
    from common.data.splits import fraction_split, published_list

    ham = published_list("ham10000", "test")
    assert len(ham) == len(set(ham)) == 1015 and all(len(i) == 7 and i.isdigit() for i in ham)
    ph2 = {name: published_list("ph2", name) for name in ("train", "val", "test")}
    assert [len(v) for v in ph2.values()] == [80, 20, 100]
    every = [c for ids in ph2.values() for c in ids]
    assert len(set(every)) == 200
    seeded = fraction_split(every, (0.4, 0.1, 0.5), 42)
    assert seeded == {"train": sorted(ph2["train"]), "validation": sorted(ph2["val"]), "test": sorted(ph2["test"])}


def test_ham10000_image_without_mask(tmp_path):
    root = write_ham10000(tmp_path, n_images=4)
    (root / "HAM10000_segmentations_lesion_tschandl" / "ISIC_0024307_segmentation.png").unlink()
    report = get_dataset("ham10000").check(root)
    assert report.problems == [
        f"{root / 'HAM10000_images_part_1' / 'ISIC_0024307.jpg'}: no mask ISIC_0024307_segmentation.png "
        f"in {root / 'HAM10000_segmentations_lesion_tschandl'}"
    ]


def test_ph2_split_and_ignored_roi(tmp_path):
    root = write_ph2(tmp_path, n_images=10)
    reader = get_dataset("ph2")
    lists = reader.datalists(root)
    # the authors' lists: IMD002-006, 016-020 train, 008-014 test; IMD012 is on none of them (not a PH2 id)
    assert {s: [e["case"] for e in lists[s]] for s in lists} == {
        "train": ["IMD002", "IMD004", "IMD006", "IMD016", "IMD018", "IMD020"],
        "validation": [],
        "test": ["IMD008", "IMD010", "IMD014"],
    }
    assert [len(v) for v in get_dataset("ph2", seeded=True).datalists(root).values()] == [4, 1, 5]
    every = [e for s in lists.values() for e in s]
    assert all(Path(e["label"]).parent.name == f"{e['case']}_lesion" for e in every)
    assert all(e["image"].endswith(f"{e['case']}_Dermoscopic_Image/{e['case']}.bmp") for e in every)
    assert reader.check(root / "PH2Dataset").ok  # the inner folder works as root too

    (root / "PH2Dataset" / "PH2 Dataset images" / "IMD004" / "IMD004_lesion" / "IMD004_lesion.bmp").unlink()
    report = reader.check(root)
    assert report.problems == [
        f"{root / 'PH2Dataset' / 'PH2 Dataset images' / 'IMD004'}: missing IMD004/IMD004_lesion/IMD004_lesion.bmp"
    ]


def test_masks_saved_as_label_values_read_as_foreground(tmp_path):
    """Annotation tools (MONAI Label) save 0/1 masks; they must not read as empty."""
    from PIL import Image

    from common.io.images import read_binary_mask

    values = np.zeros((6, 5), np.uint8)
    values[2:4, 1:3] = 1
    Image.fromarray(values).save(tmp_path / "label01.png")
    Image.fromarray(values * 255).save(tmp_path / "label255.png")
    np.testing.assert_array_equal(read_binary_mask(tmp_path / "label01.png")[0], values)
    np.testing.assert_array_equal(read_binary_mask(tmp_path / "label255.png")[0], values)
