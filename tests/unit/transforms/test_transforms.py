"""The augmentation and loading transforms: image and label move together, seeds reproduce, values stay valid."""

from __future__ import annotations

from collections import Counter

import nibabel as nib
import numpy as np
import pytest
import torch
from miniature_layouts import disc, write_busi, write_synapse_npz

from common.data import get_dataset
from common.io.volumes import VolumeReadError
from common.transforms.augmentation import (
    RandBrightnessContrastd,
    RandElasticd,
    RandIntegerRotated,
    gaussian_blur_2d,
    opencv_gaussian_sigma,
    photo_augmentation,
    transunet_augmentation,
)
from common.transforms.loading import DecodeRunLengthd, LoadMask2Dd, load_volume_tensor, volume_tensor
from common.transforms.pipelines import eval_transforms, train_transforms


def _labelled_pair(size=(48, 40)) -> dict:
    """An asymmetric integer label and an image that equals it times 10, as (1, H, W) tensors."""
    label = np.zeros(size, np.float32)
    label[disc(size, (14, 12), 6)] = 1
    label[5:9, 25:38] = 2
    label[30:44, 4:8] = 3
    return {"image": torch.as_tensor(label[None] * 10), "label": torch.as_tensor(label[None])}


def _outcome(before: torch.Tensor, after: torch.Tensor) -> str:
    if torch.equal(before, after):
        return "identity"
    for k in range(4):
        rotated = torch.rot90(before, k, dims=(1, 2))
        if any(torch.equal(rotated.flip(axis), after) for axis in (1, 2)):
            return "rot90+flip"
    return "rotation"


def test_transunet_branches_move_image_and_label_together():
    augment = transunet_augmentation()
    augment.set_random_state(seed=0)
    pair = _labelled_pair()
    outcomes = Counter()
    for _ in range(200):
        out = augment(dict(pair))
        torch.testing.assert_close(
            torch.as_tensor(out["image"]), torch.as_tensor(out["label"]) * 10
        )  # nearest everywhere
        assert set(torch.unique(torch.as_tensor(out["label"])).tolist()) <= {0.0, 1.0, 2.0, 3.0}
        outcomes[_outcome(pair["label"], torch.as_tensor(out["label"]))] += 1
    assert 70 <= outcomes["rot90+flip"] <= 130  # p 0.5
    assert 25 <= outcomes["rotation"] <= 75 and outcomes["identity"] >= 25  # p 0.25 each (angle 0 counts as identity)


def test_integer_rotation_angles_cover_minus_20_to_19():
    rotate = RandIntegerRotated(["image"])
    rotate.set_random_state(seed=1)
    angles = set()
    for _ in range(600):
        rotate.randomize()
        angles.add(rotate.angle)
    assert angles == set(range(-20, 20))


def test_synapse_train_pipeline_is_seeded_and_sized(tmp_path):
    reader = get_dataset(
        "synapse", root=write_synapse_npz(tmp_path, n_train_cases=1, slices_per_case=2, n_test_cases=1)
    )
    entry = reader.datalists()["train"][0]
    first = train_transforms("synapse", seed=7)(entry)
    again = train_transforms("synapse", seed=7)(entry)
    assert first["image"].shape == (1, 224, 224) and first["label"].shape == (1, 224, 224)
    torch.testing.assert_close(first["image"], again["image"])
    assert set(torch.unique(first["label"]).tolist()) <= set(range(9))
    runs = train_transforms("synapse", seed=7)
    assert any(not torch.equal(runs(entry)["label"], first["label"]) for _ in range(6))  # draws differ call to call


def test_photo_pipeline_outputs_and_alignment(tmp_path):
    reader = get_dataset("busi", root=write_busi(tmp_path, counts={"benign": 3}))
    entry = next(e for e in reader.datalists(splits={"train": ["benign (3)"], "validation": [], "test": []})["train"])
    pipeline = train_transforms("busi", seed=3)
    for _ in range(5):
        out = pipeline(entry)
        assert out["image"].shape == (3, 224, 224) and out["label"].shape == (1, 224, 224)
        assert out["image"].min() == 0.0 and out["image"].max() == 1.0  # per-image min-max
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
    evaluated = eval_transforms("busi")(entry)
    assert evaluated["image"].shape == (3, 224, 224) and set(torch.unique(evaluated["label"]).tolist()) == {0.0, 1.0}


def test_photo_geometry_keeps_image_and_mask_aligned():
    geometry = [t for t in photo_augmentation() if type(t).__name__ in ("RandRotated", "RandFlipd", "RandElasticd")]
    mask = torch.zeros(1, 64, 64)
    mask[0, 10:30, 20:50] = 1
    for seed in range(8):
        out = {"image": mask.repeat(3, 1, 1) * 255, "label": mask.clone()}
        for t in geometry:
            t.set_random_state(seed)
            t.prob = 1.0
            out = t(out)
        bright = torch.as_tensor(out["image"])[0] > 127
        label = torch.as_tensor(out["label"])[0] > 0.5
        assert (bright & label).sum() / (bright | label).sum() > 0.9


def test_brightness_contrast_formula():
    transform = RandBrightnessContrastd(["image"], prob=1.0)
    transform.set_random_state(seed=5)
    image = torch.linspace(0, 255, 100).reshape(1, 10, 10)
    out = transform({"image": image})["image"]
    expected = (image * transform.alpha + transform.beta * 255).clamp(0, 255)
    torch.testing.assert_close(out, expected)
    assert 0.8 <= transform.alpha <= 1.2 and -0.2 <= transform.beta <= 0.2


def test_gaussian_blur_uses_opencv_sigma():
    assert opencv_gaussian_sigma(3) == pytest.approx(0.8) and opencv_gaussian_sigma(7) == pytest.approx(1.4)
    impulse = torch.zeros(1, 9, 9)
    impulse[0, 4, 4] = 1.0
    response = gaussian_blur_2d(impulse, 5)
    taps = np.exp(-(np.arange(-2, 3) ** 2) / (2 * opencv_gaussian_sigma(5) ** 2))
    taps /= taps.sum()
    np.testing.assert_allclose(response[0, 2:7, 2:7].numpy(), np.outer(taps, taps), rtol=1e-5)
    assert response.sum() == pytest.approx(1.0)


def test_elastic_zero_strength_is_identity_and_labels_stay_discrete():
    pair = _labelled_pair((40, 40))
    still = RandElasticd(["image", "label"], alpha=0.0, prob=1.0)
    out = still(dict(pair))
    torch.testing.assert_close(torch.as_tensor(out["label"]), pair["label"])
    strong = RandElasticd(["image", "label"], alpha=300.0, sigma=6.0, prob=1.0)
    strong.set_random_state(seed=2)
    out = strong(dict(pair))
    assert not torch.equal(torch.as_tensor(out["label"]), pair["label"])
    assert set(torch.unique(torch.as_tensor(out["label"])).tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_mask_union_and_run_length_decoding(tmp_path):
    from miniature_layouts import write_picture

    first = np.zeros((6, 8), np.uint8)
    first[1:3, 1:3] = 255
    second = np.zeros((6, 8), np.uint8)
    second[4:6, 5:8] = 255
    paths = [
        str(write_picture(tmp_path / "a (1)_mask.png", first)),
        str(write_picture(tmp_path / "a (1)_mask_1.png", second)),
    ]
    union = LoadMask2Dd("label")({"label": paths})["label"]
    np.testing.assert_array_equal(union[0].numpy(), ((first > 0) | (second > 0)).astype(np.float32))

    decoded = DecodeRunLengthd()({"label_rle": ["1 3 10 2", "", "20 1"], "height": 4, "width": 5})["label"]
    assert decoded.shape == (3, 4, 5)
    assert decoded[0].flatten().nonzero().flatten().tolist() == [0, 1, 2, 9, 10]
    assert decoded[1].sum() == 0 and decoded[2].flatten().nonzero().flatten().tolist() == [19]


def test_picture_resize_is_the_authors_torchvision_resize():
    """datasets/*/transform.py: TF.Resize(BILINEAR, antialias=True) on the uint8 picture, TF.Resize(NEAREST) on
    the mask; downscaling (where anti-aliasing matters) and upscaling, odd sizes."""
    import torchvision.transforms.v2 as TF

    from common.transforms.resize import ResizePictured

    rng = np.random.default_rng(5)
    for shape in ((3, 181, 253), (3, 97, 61)):
        picture = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
        mask = torch.from_numpy((rng.random((1, *shape[1:])) < 0.3).astype(np.uint8) * 255)
        out = ResizePictured(("image", "label"), (224, 224))({"image": picture.float(), "label": mask.float() / 255})
        theirs_image = TF.Resize(size=(224, 224), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)(picture)
        theirs_mask = TF.Resize(size=(224, 224), interpolation=TF.InterpolationMode.NEAREST)(mask)
        assert torch.equal(out["image"], theirs_image.float())
        assert torch.equal(out["label"], (theirs_mask > 0).float())


def test_slice_resize_is_transunets_scipy_zoom():
    from scipy.ndimage import zoom

    from common.transforms.resize import ZoomSliced

    rng = np.random.default_rng(6)
    image = rng.random((1, 512, 512)).astype(np.float32)
    label = rng.integers(0, 9, (1, 512, 512)).astype(np.float32)
    out = ZoomSliced(("image", "label"), (224, 224))(
        {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}
    )
    np.testing.assert_array_equal(out["image"][0].numpy(), zoom(image[0], (224 / 512, 224 / 512), order=3))
    np.testing.assert_array_equal(out["label"][0].numpy(), zoom(label[0], (224 / 512, 224 / 512), order=0))


def test_photo_augmentation_probabilities_are_the_authors():
    """A.Rotate(p=0.5), flips p 0.5, A.RandomBrightnessContrast(p=0.2), A.GaussianBlur(p=0.3), elastic p 0.3."""
    from common.transforms.augmentation import photo_augmentation

    probabilities = {type(t).__name__ + str(i): t.prob for i, t in enumerate(photo_augmentation())}
    assert list(probabilities.values()) == [0.5, 0.5, 0.5, 0.2, 0.3, 0.3]


def test_volume_tensor_puts_channels_first_and_keeps_the_geometry():
    array = np.arange(5 * 4 * 3 * 2, dtype=np.int16).reshape(5, 4, 3, 2)
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    tensor = volume_tensor(array, affine, "/data/case.nii.gz", dtype=np.float32)
    assert tensor.shape == (2, 5, 4, 3) and tensor.dtype == torch.float32
    for channel in range(2):
        np.testing.assert_array_equal(tensor[channel].numpy(), array[..., channel])
    assert tensor.affine.dtype == torch.float64 and np.array_equal(tensor.affine.numpy(), affine)
    assert tensor.meta["filename_or_obj"] == "/data/case.nii.gz"
    assert volume_tensor(array[..., 0], affine, "x").shape == (1, 5, 4, 3)


def test_load_volume_tensor_stacks_channel_files_of_one_grid(tmp_path):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    t1 = np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000  # beyond int16: widened, not wrapped
    t2 = -np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    for name, array in (("t1", t1), ("t2", t2), ("other", np.zeros((4, 5, 2), np.int16))):
        nib.save(nib.Nifti1Image(array, affine), tmp_path / f"{name}.nii.gz")
    tensor = load_volume_tensor([tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz"])
    assert tensor.shape == (2, 4, 5, 3) and tensor.dtype == torch.int32
    np.testing.assert_array_equal(tensor[0].numpy(), t1)
    np.testing.assert_array_equal(tensor[1].numpy(), t2)
    assert tensor.meta["filename_or_obj"] == str(tmp_path / "t1.nii.gz")
    with pytest.raises(VolumeReadError, match=r"other\.nii\.gz: its grid differs .* \(4, 5, 2\) vs \(4, 5, 3\)"):
        load_volume_tensor([tmp_path / "t1.nii.gz", tmp_path / "other.nii.gz"])
