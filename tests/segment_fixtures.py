"""Bundle copies, an exact threshold network, real images and their storage for the segment and PACS tests."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
import torch.nn as nn
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from repo_paths import REPO

from common.io.volumes import LPS_TO_RAS

ROI = 64


class IntensityThreshold(nn.Module):
    """Logits ``[0.5 - x, x - 0.5]`` of the first channel: label 1 where the preprocessed image exceeds 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x[:, :1], x[:, :1] - 0.5], dim=1)


def copy_bundle(tmp: Path, name: str, spatial_size: int = ROI, weights: bool = False) -> Path:
    """A copy of ``bundles/<name>`` at ``spatial_size``; ``weights``: a pvt_v2_b0 encoder and random model.pt."""
    root = tmp / name
    shutil.copytree(REPO / "bundles" / name, root, ignore=shutil.ignore_patterns("*.pt"))
    config_file = root / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config.update(spatial_size=[spatial_size, spatial_size], num_workers=0)
    if weights:
        config["network_def"]["encoder"] = "pvt_v2_b0"
    config_file.write_text(json.dumps(config, indent=1))
    if weights:
        from monai.bundle import ConfigParser  # here: tests/conftest.py imports this module, keep that light

        parser = ConfigParser()
        parser.read_config(str(config_file))
        torch.manual_seed(0)
        torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    return root


def flip_axes(array: np.ndarray, affine: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with ``axes`` reversed; world positions unchanged."""
    flip = np.eye(4)
    for axis in axes:
        flip[axis, axis], flip[axis, 3] = -1, array.shape[axis] - 1
    return np.flip(array, axes).copy(), affine @ flip


def write_mha(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write an (X, Y, Z) array with a RAS ``affine`` as MetaImage (stored in LPS, as ITK does)."""
    lps = LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def mni() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 T1 template (2 mm, RAS) as float32 (X, Y, Z) and its affine."""
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    return template.get_fdata().astype(np.float32), template.affine


def crop(volume: np.ndarray, affine: np.ndarray, start: tuple[int, int, int], shape: tuple[int, int, int]):
    """A block of ``volume`` with its own affine."""
    block = volume[tuple(slice(s, s + n) for s, n in zip(start, shape))].copy()
    moved = affine.copy()
    moved[:3, 3] = (affine @ [*start, 1])[:3]
    return block, moved


def ct_series(folder: Path) -> tuple[np.ndarray, list[Path]]:
    """pydicom's real CT slice (128 x 128) as a four-slice series 5 mm apart, slice k rolled by 8k rows; new UIDs.

    Returns the Hounsfield volume (columns, rows, slices) in slice order and the files (shuffled names).
    """
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid, volume, files = generate_uid(), [], []
    folder.mkdir()
    for k, name in enumerate(["c", "a", "d", "b"]):
        ds = copy.deepcopy(base)
        stored = np.roll(base.pixel_array, 8 * k, axis=0)
        ds.PixelData = stored.astype(base.pixel_array.dtype).tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * k]
        ds.save_as(folder / f"{name}.dcm")
        files.append(folder / f"{name}.dcm")
        volume.append(stored.T * float(base.RescaleSlope) + float(base.RescaleIntercept))
    return np.stack(volume, axis=-1), files
