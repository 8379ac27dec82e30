"""Run a bundle's configs on miniature data in its dataset's real layout (shared by the bundle tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

import miniature_layouts as layouts
import nibabel as nib
import numpy as np
from monai.bundle import run as run_bundle

from common.bundle.specs import BundleSpec, config_files
from common.data import get_dataset

BUNDLES_ROOT = Path(__file__).resolve().parent.parent / "bundles"

#: small and fast: a 64 x 64 input and a small network of the same family; every other setting is the bundle's own
SMALL = {"spatial_size": [64, 64], "num_workers": 0}
SMALL_NETWORKS = {
    "mlla_unet": {"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "decoder_depths": [1, 1, 1]},
    "setr": {"image_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 2, "head_channels": 32},
    "transunet": {"image_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 2},
    "cvt": {"embed_dims": [32, 64, 96], "depths": [1, 1, 1], "num_heads": [1, 2, 3]},
}


def small_overrides(spec: BundleSpec) -> dict:
    """Config overrides that shrink the bundle's network and input for a quick run."""
    network = {"encoder": "pvt_v2_b0"} if spec.network.startswith("pvt_") else SMALL_NETWORKS[spec.network]
    return {**SMALL, **{f"network_def#{k}": v for k, v in network.items()}}


WRITERS = {
    "synapse": lambda root: layouts.write_synapse_npz(root, n_train_cases=2, slices_per_case=2, n_test_cases=2),
    "acdc": lambda root: layouts.write_acdc(root, n_patients=10),
    "busi": lambda root: layouts.write_busi(root),
    "ham10000": lambda root: layouts.write_ham10000(root),
    "ph2": lambda root: layouts.write_ph2(root, n_images=12),  # IMD024 is on the authors' validation list
    "uwmgi": lambda root: layouts.write_uwmgi(root, n_cases=10, days_per_case=1, slices_per_day=2),
}


def copy_bundle(spec: BundleSpec, tmp_path: Path) -> Path:
    """A copy of the checked-in bundle folder (bundles run from their own folder)."""
    target = tmp_path / spec.name
    shutil.copytree(BUNDLES_ROOT / spec.name, target)
    return target


def write_dataset(spec: BundleSpec, tmp_path: Path) -> Path:
    return WRITERS[spec.dataset](tmp_path / "data")


def run_config(bundle: Path, config: str, **overrides) -> None:
    """``python -m monai.bundle run --config_file configs/<config>.json`` in-process, from the bundle folder."""
    run_bundle(
        config_file=config_files(bundle, config),
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        **overrides,
    )


def write_sample_inputs(spec: BundleSpec, folder: Path) -> list[Path]:
    """Two inputs of different sizes for inference: NIfTI volumes (one not in RAS) or PNG pictures."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    reader = get_dataset(spec.dataset)
    if reader.spatial_dims == 3:
        ras = np.diag([0.8, 0.8, 3.0, 1.0])
        lps = np.array([[-0.7, 0, 0, 90], [0, -0.7, 0, 120], [0, 0, 2.5, -40], [0, 0, 0, 1.0]])
        paths = [
            layouts.write_nifti(folder / "ras.nii.gz", rng.normal(0, 200, (40, 36, 3)).astype(np.float32), ras),
            layouts.write_nifti(folder / "lps.nii.gz", rng.normal(0, 200, (30, 44, 2)).astype(np.float32), lps),
        ]
    else:
        shape = (37, 50, reader.image_channels) if reader.image_channels > 1 else (37, 50)
        dtype = np.uint16 if spec.dataset == "uwmgi" else np.uint8  # UW-Madison scans are 16-bit PNGs
        paths = [
            layouts.write_picture(folder / "first image (1).png", rng.integers(0, 255, shape).astype(dtype)),
            layouts.write_picture(folder / "second.png", rng.integers(0, 255, (41, 29, *shape[2:])).astype(dtype)),
        ]
    return paths


def read_output(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An output mask's array and affine (``None`` for PNG)."""
    if path.suffix == ".png":
        from PIL import Image

        return np.asarray(Image.open(path)), None
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine
