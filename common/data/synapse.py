"""Synapse multi-organ CT (BTCV): the TransUNet release and the raw BTCV download.

Both map to the same 8 organs and case numbers (``case0001`` is ``img0001``) and use TransUNet's
split: 18 training cases, 12 test cases. The authors' code picks its best checkpoint on the 12 test
volumes, so by default the validation list is the test list; ``validation_cases=n`` instead holds
out ``n`` training cases (seeded) for validation.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np

from common.data.base import Cases, DatasetReader, Entry, SampleError, Scan, describe_folder, find_folder, layout_error
from common.data.splits import DEFAULT_SEED, TRANSUNET_LIST, Splits
from common.io.images import read_image_2d
from common.io.volumes import load_volume, volume_shape

SYNAPSE_LABEL_NAMES = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "liver",
    "stomach",
    "aorta",
    "pancreas",
)
BTCV_LABEL_NAMES = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
    "portal and splenic veins",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
)
# raw BTCV label -> TransUNet label; every raw label not listed becomes background
BTCV_TO_SYNAPSE = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}
TRANSUNET_TEST_CASES = tuple(f"case{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38))
TRANSUNET_TRAIN_CASES = tuple(
    f"case{n:04d}" for n in (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
)
TRANSUNET_TRAIN_SLICES = 2211

#: ``validation`` choices: the authors' protocol (select on the 12 test cases) or a held-out set of training cases.
VALIDATION_CHOICES = ("test_set", "held_out")
HELD_OUT_VALIDATION_CASES = 4  # of the 18 training cases, seeded; 14 remain for training
SELECTION_TEXT = {
    "test_set": "checkpoint selected on the test set (authors' protocol)",
    "held_out": f"checkpoint selected on {HELD_OUT_VALIDATION_CASES} validation cases held out of the 18 training "
    "cases (not the authors' protocol)",
}


def selection_text(validation: str) -> str:
    """How the checkpoint is selected under a ``validation`` choice, in words (model cards, CSVs, printouts)."""
    validation_cases_for(validation)  # refuses an unknown choice
    return SELECTION_TEXT[validation]


def validation_cases_for(validation: str) -> int:
    """``validation_cases`` for a ``validation`` choice: 0 (validate on the test cases) or the held-out count."""
    if validation not in VALIDATION_CHOICES:
        raise ValueError(f"validation {validation!r}: expected one of {VALIDATION_CHOICES}")
    return 0 if validation == "test_set" else HELD_OUT_VALIDATION_CASES


_NPZ_NAME = re.compile(r"^(case\d{4})_slice(\d{3,4})\.npz$")
_H5_NAME = re.compile(r"^(case\d{4})\.npy\.h5$")
_BTCV_IMAGE = re.compile(r"^img(\d{4})\.nii(\.gz)?$")


class _TransUNetSplit(DatasetReader):
    """TransUNet's case split, shared by both Synapse layouts."""

    label_names = SYNAPSE_LABEL_NAMES
    spatial_dims = 3
    intensity = "ct_window"
    augmentation = "transunet"

    def __init__(
        self, root: str | os.PathLike | None = None, seed: int = DEFAULT_SEED, validation_cases: int = 0
    ) -> None:
        super().__init__(root, seed)
        self.validation_cases = validation_cases

    def default_splits(self, cases: Cases) -> Splits:
        test = sorted(c for c in cases if c in TRANSUNET_TEST_CASES)
        train = sorted(c for c in cases if c not in TRANSUNET_TEST_CASES)
        if not self.validation_cases:
            return {"train": train, "validation": list(test), "test": test}
        held_out = sorted(random.Random(self.seed).sample(train, min(self.validation_cases, len(train))))
        return {"train": [c for c in train if c not in held_out], "validation": held_out, "test": test}

    def split_origin(self) -> str:
        validation = (
            f"validation = {self.validation_cases} training cases held out (seed {self.seed})"
            if self.validation_cases
            else "validation = the test cases (authors' protocol)"
        )
        return f"{TRANSUNET_LIST} (18 train / 12 test); {validation}"

    def _split_notes(self, cases: Cases) -> list[str]:
        notes = []
        if not self.validation_cases:
            notes.append(
                "validation = the 12 test cases, as in the authors' code "
                "(validation_cases=n holds out training cases instead)"
            )
        missing = [c for c in TRANSUNET_TRAIN_CASES + TRANSUNET_TEST_CASES if c not in cases]
        if missing:
            notes.append(
                f"{len(missing)} of TransUNet's 30 cases are absent (a partial copy?): "
                f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
            )
        return notes


class SynapseTransUNet(_TransUNetSplit):
    """The TransUNet preprocessed release: ``train_npz/*.npz`` slices, ``test_vol_h5/*.npy.h5`` volumes."""

    name = "synapse"
    title = "Synapse multi-organ CT, TransUNet release"
    expected_layout = (
        "train_npz/case0005_slice000.npz ... and test_vol_h5/case0001.npy.h5 ... "
        "(optionally lists/lists_Synapse/train.txt and test_vol.txt)"
    )
    label_values = dict(enumerate(SYNAPSE_LABEL_NAMES))
    sample_unit = "samples"
    stored_as = "slices"
    intensity = "none"  # already clipped to [-125, 275] HU and scaled to [0, 1]

    def scan(self, root: str | os.PathLike | None = None) -> Scan:
        root = self._root(root)
        folder = find_folder(
            root, ["", "Synapse", "data/Synapse"], lambda f: (f / "train_npz").is_dir() or (f / "test_vol_h5").is_dir()
        )
        if folder is None:
            raise layout_error(self.title, root, self.expected_layout, describe_folder(root))
        scan = Scan(folder, {})
        lists = find_folder(
            folder,
            ["lists/lists_Synapse", "lists_Synapse", "../lists/lists_Synapse"],
            lambda f: (f / "train.txt").is_file(),
        )
        slice_files = self._listed_files(folder / "train_npz", lists, "train.txt", ".npz", scan)
        volume_files = self._listed_files(folder / "test_vol_h5", lists, "test_vol.txt", ".npy.h5", scan)
        for path in slice_files:
            match = _NPZ_NAME.match(path.name)
            if match is None:
                scan.problems.append(f"{path}: unexpected file name; expected caseNNNN_sliceNNN.npz")
                continue
            entry = {"image": str(path), "label": str(path), "case": match[1], "slice": int(match[2])}
            scan.cases.setdefault(match[1], []).append(entry)
        for path in volume_files:
            match = _H5_NAME.match(path.name)
            if match is None:
                scan.problems.append(f"{path}: unexpected file name; expected caseNNNN.npy.h5")
                continue
            scan.cases.setdefault(match[1], []).append({"image": str(path), "label": str(path), "case": match[1]})
        if not scan.cases and not scan.problems:
            raise layout_error(
                self.title, folder, self.expected_layout, "train_npz/ and test_vol_h5/ hold no data files"
            )
        for entries in scan.cases.values():
            entries.sort(key=lambda e: e.get("slice", -1))
        if lists is None:
            scan.notes.append("no lists/lists_Synapse folder: using every file in train_npz/ and test_vol_h5/")
        n_slices = sum(1 for e in (e for es in scan.cases.values() for e in es) if "slice" in e)
        if n_slices and n_slices != TRANSUNET_TRAIN_SLICES:
            scan.notes.append(f"{n_slices} training slices (the full release has {TRANSUNET_TRAIN_SLICES})")
        scan.notes.append("training samples are 2-D slices (.npz); test samples are volumes (.npy.h5)")
        scan.notes += self._split_notes(scan.cases)
        return scan

    @staticmethod
    def _listed_files(folder: Path, lists: Path | None, list_name: str, suffix: str, scan: Scan) -> list[Path]:
        """Files named by the list file when there is one (missing ones become problems), else all files."""
        if lists is None or not (lists / list_name).is_file():
            return sorted(p for p in folder.glob(f"*{suffix}")) if folder.is_dir() else []
        names = [line.strip() for line in (lists / list_name).read_text().splitlines() if line.strip()]
        paths = [folder / (n if n.endswith(suffix) else n + suffix) for n in names]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            shown = ", ".join(p.name for p in missing[:5]) + (
                f" ... ({len(missing)} in all)" if len(missing) > 5 else ""
            )
            scan.problems.append(f"{lists / list_name} names files missing from {folder}: {shown}")
        return [p for p in paths if p.is_file()]

    def image_shape(self, entry: Entry) -> tuple[int, ...]:
        if entry["image"].endswith(".npz"):
            return read_image_2d(entry["image"], array_name="image").shape[1:]
        return volume_shape(entry["image"], h5_key="image")

    def read_label(self, entry: Entry) -> np.ndarray:
        if entry["label"].endswith(".npz"):
            return read_image_2d(entry["label"], array_name="label")[0]
        return load_volume(entry["label"], h5_key="label").array


class SynapseBTCV(_TransUNetSplit):
    """The raw BTCV download: ``RawData/Training/img/img0001.nii.gz`` + ``label/label0001.nii.gz``."""

    name = "synapse_raw"
    title = "Synapse multi-organ CT, raw BTCV"
    expected_layout = "RawData/Training/img/img0001.nii.gz ... and RawData/Training/label/label0001.nii.gz ..."
    label_values = {
        value: name if value in BTCV_TO_SYNAPSE or value == 0 else f"{name} (-> background)"
        for value, name in enumerate(BTCV_LABEL_NAMES)
    }
    label_mapping = {raw: BTCV_TO_SYNAPSE.get(raw, 0) for raw in range(len(BTCV_LABEL_NAMES))}
    sample_unit = "volumes"
    stored_as = "volumes"

    def scan(self, root: str | os.PathLike | None = None) -> Scan:
        root = self._root(root)
        folder = find_folder(
            root, ["RawData/Training", "Abdomen/RawData/Training", "Training", ""], lambda f: (f / "img").is_dir()
        )
        if folder is None:
            raise layout_error(self.title, root, self.expected_layout, describe_folder(root))
        scan = Scan(folder, {})
        for image in sorted((folder / "img").iterdir()):
            match = _BTCV_IMAGE.match(image.name)
            if match is None:
                continue
            label = folder / "label" / image.name.replace("img", "label", 1)
            if not label.is_file():
                scan.problems.append(f"{image}: no label file {label}")
                continue
            case = f"case{match[1]}"
            scan.cases[case] = [{"image": str(image), "label": str(label), "case": case}]
        if not scan.cases and not scan.problems:
            raise layout_error(self.title, folder / "img", "img0001.nii.gz ...", describe_folder(folder / "img"))
        scan.notes += self._split_notes(scan.cases)
        return scan

    def image_shape(self, entry: Entry) -> tuple[int, ...]:
        return volume_shape(entry["image"])

    def read_label(self, entry: Entry) -> np.ndarray:
        array = load_volume(entry["label"]).array
        if array.ndim != 3:
            raise SampleError(f"{entry['label']}: expected a 3-D label volume, found shape {array.shape}")
        return array
