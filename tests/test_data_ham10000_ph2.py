"""HAM10000 and PH2 layouts: counts, splits, duplicate folders, ignored roi folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from common.data import get_dataset
from miniature_layouts import write_ham10000, write_ph2


def test_ham10000_counts_split_and_duplicate_lowercase_copy(tmp_path):
    root = write_ham10000(tmp_path, n_images=10)
    shutil.copytree(root / "HAM10000_images_part_1", root / "ham10000_images_part_1")  # as in the Kaggle copy
    reader = get_dataset("ham10000")
    lists = reader.datalists(root)
    assert [len(lists[s]) for s in ("train", "validation", "test")] == [7, 1, 2]
    ids = [e["case"] for s in lists.values() for e in s]
    assert len(ids) == len(set(ids)) == 10
    entry = lists["train"][0]
    assert entry["label"].endswith(f"HAM10000_segmentations_lesion_tschandl/{entry['case']}_segmentation.png")
    report = reader.check(root)
    assert report.ok and report.value_counts == {0: 10, 255: 10}


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
    assert [len(lists[s]) for s in ("train", "validation", "test")] == [4, 1, 5]  # 80/20/100 of 200
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
