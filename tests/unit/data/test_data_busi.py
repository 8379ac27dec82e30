"""BUSI: names with spaces and parentheses, `<case>_mask.png` only (the authors') or extra masks united,
empty normal masks, bad files named."""

from __future__ import annotations

import numpy as np
from miniature_layouts import write_busi, write_picture
from PIL import Image

from common.data import get_dataset
from common.io.images import read_binary_mask
from common.transforms.pipelines import eval_transforms


def test_cases_classes_and_extra_masks(tmp_path):
    root = write_busi(tmp_path, counts={"benign": 6, "malignant": 3, "normal": 1})
    reader = get_dataset("busi")
    cases = reader.scan(root).cases
    assert len(cases) == 10 and "benign (6)" in cases and cases["normal (1)"][0]["class"] == "normal"
    assert [p.rsplit("/", 1)[1] for p in cases["benign (3)"][0]["label"]] == ["benign (3)_mask.png"]
    assert any("3 extra mask file(s)" in note for note in reader.scan(root).notes)  # one per 3rd image
    entry = get_dataset("busi", unite_masks=True).scan(root).cases["benign (3)"][0]
    assert [p.rsplit("/", 1)[1] for p in entry["label"]] == ["benign (3)_mask.png", "benign (3)_mask_1.png"]
    union = read_binary_mask(entry["label"])[0]
    first, extra = (np.array(Image.open(p)) > 0 for p in entry["label"])
    np.testing.assert_array_equal(union, first | extra)
    assert first.sum() and extra.sum() and not (first & extra).any()  # the union really adds pixels

    lists = reader.datalists(root)
    assert [len(lists[s]) for s in ("train", "validation", "test")] == [8, 1, 1]
    report = reader.check(root)
    assert report.ok and report.value_counts == {0: 10, 255: 9}  # the normal image's mask is empty


def test_eval_pipeline_on_an_image_with_two_masks(tmp_path):
    root = write_busi(tmp_path, counts={"malignant": 3})
    for unite in (False, True):
        entry = get_dataset("busi", unite_masks=unite).scan(root).cases["malignant (3)"][0]
        out = eval_transforms("busi", spatial_size=(64, 48))(entry)
        assert out["image"].shape == (3, 64, 48) and out["image"].max() == 1.0
        label = out["label"][0].numpy()
        assert label[int(0.3 * 64), int(0.3 * 48)] == 1  # <case>_mask.png
        assert label[int(0.75 * 64), int(0.75 * 48)] == int(unite)  # <case>_mask_1.png only when united


def test_bad_files_are_named_and_others_still_checked(tmp_path):
    root = write_busi(tmp_path, counts={"benign": 4, "malignant": 2})
    folder = root / "Dataset_BUSI_with_GT"
    (folder / "benign" / "benign (1).png").unlink()  # mask without image
    write_picture(folder / "benign" / "benign (2)_mask.png", np.full((10, 10), 255, np.uint8))  # wrong size
    write_picture(folder / "benign" / "benign (4)_mask.png", np.full((40, 32), 128, np.uint8))  # not 0/255... grey
    truncated = folder / "malignant" / "malignant (1)_mask.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    truncated_image = folder / "malignant" / "malignant (2).png"
    truncated_image.write_bytes(truncated_image.read_bytes()[:200])
    report = get_dataset("busi").check(root)
    text = "\n".join(report.problems)
    assert "benign (1)_mask.png: mask without its image 'benign (1).png'" in text
    assert "benign (2)_mask.png: label shape (10, 10) does not match image shape (40, 32)" in text
    assert "benign (4)_mask.png: label values [128] are outside the label map [0, 255]" in text
    assert "malignant (1)_mask.png: cannot read this image" in text
    assert "malignant (2).png: cannot read this image" in text
    assert report.value_counts[0] == 1  # benign (3) was still read
