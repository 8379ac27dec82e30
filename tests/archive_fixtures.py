"""The segment-archive tests' bundle (tests/archive_network.py's ``SignalledThreshold``), its cases and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from archive_network import signalled_volume
from segment_fixtures import copy_bundle

from common.archive.manifest import MANIFEST_FILE

AFFINE = np.diag([1.5, 1.5, 4.0, 1.0])


def signalled_bundle(tmp: Path, state_dir: Path, scale: float = 1.0) -> Path:
    """A copy of the ACDC bundle at 64 x 64 with ``SignalledThreshold`` as its network (weight ``scale``)."""
    root = copy_bundle(tmp, "pvt_gdla_acdc_segmentation")
    config_file = root / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["network_def"] = {"_target_": "archive_network.SignalledThreshold", "state_dir": str(state_dir)}
    config_file.write_text(json.dumps(config, indent=1))
    state_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"scale": torch.tensor(scale)}, root / "models" / "model.pt")
    return root


def write_volume(path: Path, signal_name: str | None, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(signalled_volume(signal_name, seed), AFFINE), path)
    return path


def manifest_rows(output: Path, name: str = MANIFEST_FILE) -> list[dict]:
    return [json.loads(line) for line in (output / name).read_text().splitlines()]


def masks(output: Path) -> dict[str, np.ndarray]:
    """Every ``*_seg.nii.gz`` under ``output`` by its path relative to it."""
    return {str(p.relative_to(output)): np.asarray(nib.load(p).dataobj) for p in sorted(output.rglob("*_seg.nii.gz"))}
