"""ACDC cardiac cine MRI: the end-diastolic (ED) and end-systolic (ES) frames of each patient.

Layout: ``training/patient001/patient001_frame01.nii.gz`` + ``patient001_frame01_gt.nii.gz``, the
frame numbers given by ``Info.cfg`` (``ED: 1``, ``ES: 12``). PVT-GDLA's split is 70/10/20 of the 100
training patients (seeded); ``testing/`` is not part of it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from common.data.base import Cases, DatasetReader, Entry, Scan, describe_folder, find_folder, layout_error
from common.data.splits import SEEDED_SPLIT, Splits, fraction_split
from common.io.volumes import load_volume, volume_shape

ACDC_LABEL_NAMES = ("background", "right ventricle", "myocardium", "left ventricle")
ACDC_FRACTIONS = (0.7, 0.1, 0.2)
_PATIENT = re.compile(r"^patient\d{3}$")


def read_info_cfg(path: Path) -> dict[str, str]:
    """``Info.cfg`` as a dict of its ``key: value`` lines."""
    pairs = (line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


class ACDC(DatasetReader):
    """ACDC ``training/patientNNN`` folders; one entry per ED / ES frame."""

    name = "acdc"
    title = "ACDC cardiac cine MRI"
    expected_layout = (
        "training/patient001/ with Info.cfg (ED: n, ES: m), patient001_frame0n.nii.gz and patient001_frame0n_gt.nii.gz"
    )
    label_names = ACDC_LABEL_NAMES
    label_values = dict(enumerate(ACDC_LABEL_NAMES))
    spatial_dims = 3
    sample_unit = "frames"
    stored_as = "volumes"
    intensity = "minmax"
    augmentation = "transunet"

    def scan(self, root: str | os.PathLike | None = None) -> Scan:
        root = self._root(root)
        folder = find_folder(
            root,
            ["training", "database/training", "ACDC/database/training", "ACDC/training", ""],
            lambda f: any(_PATIENT.match(p.name) for p in f.iterdir() if p.is_dir()),
        )
        if folder is None:
            raise layout_error(self.title, root, self.expected_layout, describe_folder(root))
        scan = Scan(folder, {})
        for patient in sorted(p for p in folder.iterdir() if p.is_dir() and _PATIENT.match(p.name)):
            entries = self._patient_entries(patient, scan.problems)
            if entries:
                scan.cases[patient.name] = entries
        if (folder.parent / "testing").is_dir():
            scan.notes.append(f"{folder.parent / 'testing'} is not part of the 70/10/20 split of the training patients")
        return scan

    @staticmethod
    def _patient_entries(patient: Path, problems: list[str]) -> list[Entry]:
        info_path = patient / "Info.cfg"
        if not info_path.is_file():
            problems.append(f"{patient}: no Info.cfg (it names the ED and ES frames)")
            return []
        info = read_info_cfg(info_path)
        entries = []
        for phase in ("ED", "ES"):
            if not info.get(phase, "").isdigit():
                problems.append(f"{info_path}: expected a line '{phase}: <frame number>', found {info.get(phase)!r}")
                continue
            frame = int(info[phase])
            image = patient / f"{patient.name}_frame{frame:02d}.nii.gz"
            label = patient / f"{patient.name}_frame{frame:02d}_gt.nii.gz"
            missing = [p.name for p in (image, label) if not p.is_file()]
            if missing:
                problems.append(f"{patient}: {phase} frame {frame} files missing: {', '.join(missing)}")
                continue
            entries.append(
                {"image": str(image), "label": str(label), "case": patient.name, "phase": phase, "frame": frame}
            )
        return entries

    def default_splits(self, cases: Cases) -> Splits:
        return fraction_split(list(cases), ACDC_FRACTIONS, self.seed)

    def split_origin(self) -> str:
        return (
            f"{SEEDED_SPLIT} (seed {self.seed}): 70/10/20 of the training patients, by patient (ED and ES "
            "together); the authors did not publish theirs"
        )

    def image_shape(self, entry: Entry) -> tuple[int, ...]:
        return volume_shape(entry["image"])

    def read_label(self, entry: Entry) -> np.ndarray:
        return load_volume(entry["label"]).array
