"""CT studies for the PACS tests, a bundle that marks every voxel, and the DICOM SEGs read back from a PACS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch
from dicomweb_client.api import DICOMwebClient
from segment_fixtures import copy_bundle, ct_series

BUNDLE = "pvt_gdla_synapse_segmentation"
SIZE = 128  # CT_small's in-plane size: the threshold network's mask is exact at the bundle's input size


def study_series(folder: Path, study_uid: str) -> tuple[np.ndarray, list[Path]]:
    """``ct_series`` (a new series) moved into the study ``study_uid``."""
    volume, files = ct_series(folder)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study_uid
        ds.save_as(path)
    return volume, files


def foreground_bundle(tmp: Path) -> Path:
    """A bundle copy whose output heads predict label 1 everywhere (zero weights, bias towards label 1)."""
    root = copy_bundle(tmp, BUNDLE, spatial_size=SIZE, weights=True)
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    for key in [k for k in state if k.startswith("head")]:
        state[key] = torch.zeros_like(state[key])
        if key.endswith("bias"):
            state[key][1] = 10.0
    torch.save(state, root / "models" / "model.pt")
    return root


def seg_series(web: DICOMwebClient, study_uid: str) -> list[pydicom.Dataset]:
    """The SEG instances of the study, found with QIDO-RS and retrieved with WADO-RS."""
    found = web.search_for_series(study_instance_uid=study_uid, search_filters={"Modality": "SEG"})
    return [ds for entry in found for ds in web.retrieve_series(study_uid, entry["0020000E"]["Value"][0])]


def referenced_instances(seg: pydicom.Dataset) -> set[str]:
    return {
        group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for group in seg.PerFrameFunctionalGroupsSequence
    }


def sop_uids(files: list[Path]) -> set[str]:
    return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
